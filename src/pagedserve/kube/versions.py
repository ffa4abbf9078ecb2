"""Lenient version parsing for the strings clusters report: v1.29.3-eks-1, containerd://1.7.12, v23.9.1, 12.4."""

from __future__ import annotations

import re

_NUMBERS = re.compile(r"(\d+(?:\.\d+)*)")


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first dotted number run in `text` as a tuple (`v1.29.3-eks` -> (1, 29, 3)); None when there is none."""
    match = _NUMBERS.search(text.split("://", 1)[-1])
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def version_at_least(found: tuple[int, ...], wanted: str) -> bool:
    """found >= wanted, comparing only as many components as `wanted` has (1.29.3 >= 1.29)."""
    minimum = parse_version(wanted)
    if minimum is None:
        raise ValueError(f"not a version: {wanted!r}")
    padded = found + (0,) * max(0, len(minimum) - len(found))
    return padded[: len(minimum)] >= minimum


def format_version(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)
