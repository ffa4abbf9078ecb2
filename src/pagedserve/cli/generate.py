"""`pagedserve generate` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="not implemented yet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("pagedserve generate: not implemented yet")
