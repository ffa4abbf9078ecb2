"""`pagedserve preflight` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("preflight", help="not implemented yet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("pagedserve preflight: not implemented yet")
