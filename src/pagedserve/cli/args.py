"""argparse flags generated from the config dataclasses: one flag per field, help from the field's docstring."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

from pagedserve.config import config_fields, field_docs


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
        base = args[0] if get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
        if base is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if get_origin(base) is Literal:
            kwargs["choices"] = list(get_args(base))
            kwargs["type"] = str
        elif get_origin(base) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = get_args(base)[0]
        elif base in (int, float, str):
            kwargs["type"] = base
        kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
        group.add_argument(_flag(f.name), **kwargs)


def config_from_args(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    """Build dataclass `cls` from the parsed flags that belong to it."""
    values = {f.name: getattr(namespace, f.name) for f in config_fields(cls) if hasattr(namespace, f.name)}
    values.update(overrides)
    return cls(**values)
