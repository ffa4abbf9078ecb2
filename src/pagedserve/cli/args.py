"""argparse flags generated from the config dataclasses: one flag per field, help from the field's docstring."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import typing
from typing import Any, Literal, get_args, get_origin

from pagedserve import envs
from pagedserve.config import config_fields, field_docs

_BYTE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_byte_size(text: str) -> int:
    """A byte count: plain digits or with a unit, e.g. 268435456, 256MiB, 4GiB, 1.5G (case-insensitive, B optional)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 268435456, 256MiB, 4GiB)")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2) or ""])


def parse_json_object(text: str) -> dict[str, Any]:
    """A flag given as one JSON object, e.g. '{"temperature": 0.5}' (vLLM's syntax for dict-valued flags)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object, e.g. '{{\"temperature\": 0.5}}', got {text!r}"
        )
    return value


def parse_json_string_list(text: str) -> list[str]:
    """A flag given as one JSON list of strings, e.g. '["https://a.example"]' (vLLM's syntax for the CORS lists)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, e.g. '[\"*\"]', got {text!r}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser | Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass `cls` to `parser` (dest = field name, default = field default)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in config_fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": docs.get(f.name, "")}
        args = [a for a in get_args(hint) if a is not type(None)]
        base = (
            args[0]
            if get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args
            else hint
        )
        if base is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if get_origin(base) is Literal:
            kwargs["choices"] = list(get_args(base))
            kwargs["type"] = str
        elif get_origin(base) is dict:
            kwargs["type"] = parse_json_object
        elif get_origin(base) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = get_args(base)[0]
        elif base is int and f.name.endswith("_bytes"):
            kwargs["type"] = parse_byte_size
        elif base in (int, float, str):
            kwargs["type"] = base
        kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
        group.add_argument(_flag(f.name), **kwargs)


def config_from_args(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    """Build dataclass `cls` from the parsed flags that belong to it."""
    values = {f.name: getattr(namespace, f.name) for f in config_fields(cls) if hasattr(namespace, f.name)}
    values.update(overrides)
    return cls(**values)


def configure_logging() -> None:
    """pagedserve's INFO log lines (dtype and kernel choices, engine state) on stderr; stdout stays the output."""
    logger = logging.getLogger("pagedserve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [pagedserve] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(envs.logging_level())
    logger.propagate = False
