"""PromQL helpers shared by the deploy tests: metric names in an expression, the value part of an alert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import yaml

from tests.deploy.chart import ADAPTER_VALUES_FILE, DASHBOARD_FILE

# Every series selector in our queries has a label matcher block: `name{...}`.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
_ALERT_COMPARISON = re.compile(r"^(?P<value>.+?)\s*(?P<op>>|<|==|>=|<=|!=)\s*(?P<threshold>[0-9.]+)$", re.S)
_ABSENT = re.compile(r"^absent\((?P<inner>.+)\)$", re.S)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Series that pagedserve does not export: Prometheus' own `up` and kube-state-metrics.
EXTERNAL_METRICS = frozenset({"up", "kube_deployment_status_replicas_available"})


def metric_names(expr: str) -> set[str]:
    """Metric names selected in `expr` (our queries always give a label matcher block)."""
    return set(_SELECTOR.findall(expr)) - {"by", "without", "on", "ignoring", "group_left", "group_right"}


def family_of(series_name: str, families: Iterable[str]) -> str | None:
    """The exported family a series name belongs to (histogram suffixes, counters with or without `_total`)."""
    known = set(families)
    candidates = [series_name]
    for suffix in HISTOGRAM_SUFFIXES:
        if series_name.endswith(suffix):
            candidates.append(series_name.removesuffix(suffix))
    candidates += [c.removesuffix("_total") for c in list(candidates) if c.endswith("_total")]
    candidates += [c + "_total" for c in list(candidates)]
    return next((c for c in candidates if c in known), None)


def alert_value_query(expr: str) -> str:
    """The part of an alert expression that yields the watched value: `X > 0.9` -> `X`, `absent(X)` -> `X`."""
    expr = expr.strip()
    absent = _ABSENT.match(expr)
    if absent:
        return absent.group("inner")
    comparison = _ALERT_COMPARISON.match(expr)
    if not comparison:
        raise ValueError(f"alert expression is neither 'value op threshold' nor absent(...): {expr}")
    return comparison.group("value")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard."""
    return [
        (panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]
    ]


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_VALUES_FILE.read_text())["rules"]["custom"]


def adapter_exposed_name(rule: dict[str, Any], series_name: str) -> str:
    """The custom-metrics API name the adapter gives `series_name` (Go's ${1} becomes Python's \\1)."""
    pattern = rule["name"]["matches"]
    template = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
    return re.sub(pattern, template, series_name)


def fill_adapter_query(rule: dict[str, Any], series: str, label_matchers: str, group_by: str) -> str:
    """metricsQuery with its template fields filled the way Prometheus Adapter fills them."""
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", label_matchers)
        .replace("<<.GroupBy>>", group_by)
    )
