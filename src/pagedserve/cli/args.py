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
from pagedserve.config_fields import config_fields, field_docs

_UNIT_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
# Integer flags that take vLLM's human-readable numbers (its arg_utils.human_readable_int): 32k, 8K.
HUMAN_READABLE_INTS = ("max_model_len", "max_num_batched_tokens")


def _unit_factor(unit: str, binary: bool) -> int:
    """k/m/g/t count in thousands, K/M/G/T in 1024s (vLLM's rule); `binary` (KiB, gi) makes either 1024s."""
    power = _UNIT_POWERS[unit.lower()]
    return 1024**power if binary or unit.isupper() else 1000**power


def parse_human_int(text: str) -> int:
    """An integer as vLLM's flags take it: plain digits, or a number with a unit, 32k = 32000, 32K = 32768, 25.6k =
    25600. vLLM's `auto` for --max-model-len (the longest that fits the KV memory) is refused by name."""
    if text.strip().lower() in ("auto", "-1"):
        raise argparse.ArgumentTypeError(
            f"{text!r} (vLLM's fit-to-memory length) is not supported: give a length, e.g. 32k, or leave the flag out "
            "for the model's own maximum"
        )
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)([kmgtKMGT]?)\s*", text)
    if match is None or (not match.group(2) and "." in match.group(1)):
        raise argparse.ArgumentTypeError(f"not an integer: {text!r} (e.g. 4096, 32k, 32K)")
    number, unit = match.groups()
    return int(float(number) * _unit_factor(unit, False)) if unit else int(number)


def parse_byte_size(text: str) -> int:
    """A byte count: plain digits, or with a unit: KiB/MiB/GiB/TiB (1024s), kB/MB/GB/TB (1000s), and vLLM's bare
    letters, K/M/G/T (1024s) and k/m/g/t (1000s); e.g. 268435456, 256MiB, 4GiB, 4G (= 4GiB), 1.5g."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)([iI]?)([bB]?)\s*", text)
    if match is None or (match.group(3) and not match.group(2)):
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 268435456, 256MiB, 4GiB)")
    number, unit, binary, byte = match.groups()
    if not unit:
        return int(float(number))
    factor = _unit_factor(unit, bool(binary)) if binary or not byte else 1000 ** _UNIT_POWERS[unit.lower()]
    return int(float(number) * factor)


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
        elif base is int and f.name in HUMAN_READABLE_INTS:
            kwargs["type"] = parse_human_int
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
