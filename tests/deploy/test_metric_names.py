"""Every metric named by the dashboard, the alerts, the HPA and the adapter rule is one the server exports
(`pagedserve.server.metrics.METRIC_FAMILIES`). The local stack test (test_local_stack.py) additionally scrapes a
real `pagedserve serve` for the same names."""

from __future__ import annotations

import pytest

from pagedserve.server.metrics import METRIC_FAMILIES, SPEC_DECODE_FAMILIES
from tests.deploy.chart import CI_VALUES_DIR, one, render, rendered_rules
from tests.deploy.promql import (
    EXTERNAL_METRICS,
    adapter_exposed_name,
    adapter_rules,
    alert_value_query,
    dashboard,
    dashboard_queries,
    family_of,
    metric_names,
)

pytestmark = pytest.mark.helm

REQUIRED_DASHBOARD_FAMILIES = {
    "vllm:request_success",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:admission_rejections",
}


def _assert_exported(names: set[str], where: str) -> set[str]:
    families = set()
    for name in names - EXTERNAL_METRICS:
        family = family_of(name, METRIC_FAMILIES | SPEC_DECODE_FAMILIES)
        assert family, f"{where} uses {name}, which the server does not export"
        families.add(family)
    return families


def test_family_lookup_handles_suffixes() -> None:
    assert (
        family_of("vllm:time_to_first_token_seconds_bucket", METRIC_FAMILIES)
        == "vllm:time_to_first_token_seconds"
    )
    assert family_of("vllm:prompt_tokens_total", METRIC_FAMILIES) in {
        "vllm:prompt_tokens",
        "vllm:prompt_tokens_total",
    }
    assert family_of("vllm:gpu_cache_usage_perc", METRIC_FAMILIES) is None, "the old vLLM name is not emitted"


def test_dashboard_metrics_are_exported() -> None:
    used: set[str] = set()
    for title, expr in dashboard_queries():
        used |= _assert_exported(metric_names(expr), f"dashboard panel {title!r}")
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            used |= _assert_exported(
                metric_names(variable["definition"]), f"dashboard variable {variable['name']}"
            )
    assert REQUIRED_DASHBOARD_FAMILIES <= {f.removesuffix("_total") for f in used}


def test_alert_metrics_are_exported() -> None:
    for group in rendered_rules()["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            _assert_exported(names, f"alert {rule['alert']}")
            assert metric_names(alert_value_query(rule["expr"])) == names


def test_hpa_metrics_are_served_by_an_adapter_rule_over_exported_series() -> None:
    hpa = one(render([CI_VALUES_DIR / "hpa-values.yaml"]), "HorizontalPodAutoscaler")
    exposed = {}
    for rule in adapter_rules():
        [series] = metric_names(rule["seriesQuery"])
        _assert_exported({series}, "the prometheus-adapter rule")
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        exposed[adapter_exposed_name(rule, series)] = series
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        assert name in exposed, f"HPA metric {name} has no adapter rule (rules expose {sorted(exposed)})"
    assert exposed["vllm_num_requests_waiting"] == "vllm:num_requests_waiting"


def test_keda_query_metrics_are_exported() -> None:
    scaled = one(render([CI_VALUES_DIR / "keda-values.yaml"]), "ScaledObject")
    _assert_exported(metric_names(scaled["spec"]["triggers"][0]["metadata"]["query"]), "the KEDA trigger")
