"""Render the pagedserve chart with the real helm binary and hand back the objects as Python dicts."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import REPO_ROOT, ensure_helm

CHART_DIR = REPO_ROOT / "deploy" / "helm" / "pagedserve"
CI_VALUES_DIR = CHART_DIR / "ci"
MANIFESTS_FILE = REPO_ROOT / "deploy" / "manifests" / "pagedserve.yaml"
ADAPTER_VALUES_FILE = REPO_ROOT / "deploy" / "prometheus-adapter" / "values.yaml"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "pagedserve.json"
RELEASE = "pagedserve"
NAMESPACE = "llm"


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries its stderr."""


def run_helm(args: Sequence[str]) -> str:
    result = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def render_text(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    skip_tests: bool = False,
    values: dict[str, Any] | None = None,
) -> str:
    """`helm template` output. `values` (typed YAML, unlike --set's strings) goes last, over the files."""
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for values_file in values_files:
        args += ["--values", str(values_file)]
    for assignment in set_values:
        args += ["--set", assignment]
    if skip_tests:
        args.append("--skip-tests")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        if values is not None:
            yaml.safe_dump(values, values_file)
            values_file.flush()
            args += ["--values", values_file.name]
        return run_helm(args)


def render(
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    skip_tests: bool = False,
    values: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    text = render_text(values_files, set_values, release, namespace, skip_tests, values)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = by_kind(objects, kind)
    assert len(matches) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def ci_values_files() -> list[Path]:
    return sorted(CI_VALUES_DIR.glob("*.yaml"))


def rendered_rules(extra_rule_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule's spec ({groups: [...]}, promtool's rule-file format) for release/namespace defaults."""
    rule_values = {"enabled": True, **(extra_rule_values or {})}
    objects = render(values={"monitoring": {"prometheusRule": rule_values}})
    return one(objects, "PrometheusRule")["spec"]
