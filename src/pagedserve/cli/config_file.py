"""`pagedserve serve --config FILE`: vLLM's YAML config file, whose keys are the serve flags' long names.

A ConfigMap mounted as `--config /etc/vllm/config.yaml` works unchanged: each key becomes its flag, inserted before
the command line's own arguments, so a flag given on the command line wins (vLLM's rule). Values: true gives the
flag alone (false its --no- form for on/off flags), a list gives the flag once with every item (one JSON list for a
flag that takes JSON), an object gives one JSON argument (--speculative-config and the like).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import yaml


def expand_config_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """argv with `serve ... --config FILE` expanded in place; other commands unchanged. ValueError on a bad file."""
    if "serve" not in argv:
        return argv
    start = argv.index("serve") + 1
    path = None
    for i, arg in enumerate(argv[start:], start):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None:
        return argv
    options = _serve_options(parser)
    return argv[:start] + config_file_args(path, options) + argv[start:]


def config_file_args(path: str, options: dict[str, argparse.Action]) -> list[str]:
    """The flags a config file stands for. `options`: the serve parser's actions by option string."""
    try:
        content = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--config {path}: cannot read it as YAML: {error}") from None
    if content is None:
        return []
    if not isinstance(content, dict):
        raise ValueError(
            f"--config {path}: expected a mapping of flag names to values, got {type(content).__name__}"
        )
    args: list[str] = []
    for key, value in content.items():
        flag = "--" + str(key).replace("_", "-")
        action = options.get(flag)
        if key == "config":
            raise ValueError(f"--config {path}: a config file cannot name another one")
        args += _flag_args(flag, value, action)
    return args


def _flag_args(flag: str, value: Any, action: argparse.Action | None) -> list[str]:
    if isinstance(value, bool):
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else "--no-" + flag[2:]]
        return [flag] if value else []
    if value is None:
        return []
    if isinstance(value, list):
        if action is not None and action.nargs in ("+", "*"):
            return [flag, *(_scalar(item) for item in value)]
        return [flag, json.dumps(value)]
    return [flag, _scalar(value)]


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _serve_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    for action in parser._actions:  # argparse keeps subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            serve = action.choices["serve"]
            return {option: a for a in serve._actions for option in a.option_strings}
    return {}
