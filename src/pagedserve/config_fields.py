"""What the config dataclasses share: each field's docstring (its CLI help and the chart's values doc), the
fields a caller may set, and the checks every section runs (ValueError naming the field)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import Literal


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source (the string literal after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def check_choices(config: object) -> None:
    """ValueError naming the field when a Literal-typed field of a config dataclass holds another value (flags get
    argparse's check; this one is for the LLM class's keyword arguments)."""
    hints = typing.get_type_hints(type(config))
    for f in config_fields(type(config)):
        hint = hints[f.name]
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        literal = hint if typing.get_origin(hint) is Literal else (options[0] if len(options) == 1 else None)
        value = getattr(config, f.name)
        if literal is None or typing.get_origin(literal) is not Literal or value is None:
            continue
        if value not in typing.get_args(literal):
            raise ValueError(
                f"{f.name} must be one of {', '.join(map(str, typing.get_args(literal)))}, got {value!r}"
            )


def at_least(config: object, name: str, low: float, note: str = "", optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ValueError(f"{name} must be >= {low}{f' ({note})' if note else ''}, got {value!r}")
