"""values.yaml documents its keys: every top-level key and every key one level below has a comment above it,
and every key of values.yaml is known to values.schema.json (whose objects reject unknown keys)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy.chart import CHART_DIR

VALUES_FILE = CHART_DIR / "values.yaml"
SCHEMA_FILE = CHART_DIR / "values.schema.json"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.]*):")


def test_top_two_levels_of_keys_are_commented() -> None:
    lines = VALUES_FILE.read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if match and len(match.group("indent")) <= 2 and not lines[number - 1].lstrip().startswith("#"):
            undocumented.append(f"line {number + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment above them:\n" + "\n".join(undocumented)


def _check_against_schema(values: Any, schema: dict[str, Any], path: str) -> list[str]:
    problems = []
    if isinstance(values, dict) and schema.get("type") == "object" and "properties" in schema:
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path or '<root>'}: schema object accepts unknown keys")
        for key, value in values.items():
            if key not in schema["properties"]:
                problems.append(f"{path}.{key}: not in the schema")
            else:
                problems += _check_against_schema(value, schema["properties"][key], f"{path}.{key}")
    return problems


def test_schema_knows_every_value_and_closes_every_documented_object() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    schema = json.loads(SCHEMA_FILE.read_text())
    assert _check_against_schema(values, schema, "") == []
