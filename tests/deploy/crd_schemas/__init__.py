"""JSON Schemas of the custom resources the chart renders, one YAML file per kind, and their validation.

kubernetes-validate knows the built-in kinds only. For the custom ones no package registry carries a schema we
can use: none carries the Gateway API Inference Extension's (InferencePool, InferenceObjective) or
LeaderWorkerSet's, and the npm models of Gateway API, KEDA and the Prometheus Operator (`@kubernetes-models/*`)
ship compiled validators that accept unknown keys. The project commits nothing fetched from other repositories,
so these schemas are our own, written from each API's reference for the fields the chart emits and those its
values let a user set, with their required fields, enums, limits and patterns. Every object in them is closed
(`additionalProperties: false`), so a misspelled key fails here as strict field validation makes `kubectl apply`
fail on a cluster. A CRD's CEL rules are checked where JSON Schema can say the same thing (if/then); the others
are not. `_defs.yaml` holds the definitions the files share (object metadata, label selectors, durations).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).parent


@cache
def schemas() -> dict[str, dict[str, Any]]:
    """The schema of every custom kind the chart renders, by kind."""
    shared = yaml.safe_load((SCHEMA_DIR / "_defs.yaml").read_text())
    by_kind = {}
    for path in sorted(SCHEMA_DIR.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        schema = yaml.safe_load(path.read_text())
        schema["$defs"] = {**shared, **schema.get("$defs", {})}
        Draft202012Validator.check_schema(schema)
        by_kind[schema["properties"]["kind"]["const"]] = schema
    return by_kind


CRD_KINDS = frozenset(schemas())


def errors(obj: dict[str, Any]) -> list[str]:
    """What is wrong with `obj` against its kind's schema, one line per error ("spec.rules.0: message")."""
    validator = Draft202012Validator(schemas()[obj["kind"]])
    found = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in found]
