"""Local stack: a real Prometheus (Debian) scrapes a real `pagedserve serve` on loopback under load; the Prometheus
Adapter rule's query, every alert's value query and every dashboard query return series with sane values; the
server exports every metric they name; and a real nginx with the Ingress settings streams its SSE unbuffered.
The server runs with the args the chart renders (CPU mode), so the chart's flags are proven too.

Only kube-state-metrics is stood in for (it needs a Kubernetes API server): see tests/deploy/stack.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.chart import CI_VALUES_DIR, one, render, rendered_rules
from tests.deploy.nginx_proxy import ingress_annotations, proxy_directives, running_nginx
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
from tests.deploy.stack import (
    TARGET_LABELS,
    LoadResult,
    finite,
    instant_query,
    run_load,
    running_prometheus,
    running_server,
    sample_values,
    static_metrics_server,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.model,
    pytest.mark.prometheus,
    pytest.mark.nginx,
    pytest.mark.helm,
]

# The server runs with the args the chart renders in CPU mode. max-num-seqs 2 with room for 6 admitted requests
# and 10 clients: a queue forms and some requests are refused.
CHART_VALUES = {
    "engine": {
        "maxModelLen": 1024,
        "kvCacheMemoryBytes": 268435456,
        "maxNumSeqs": 2,
        "enablePrefixCaching": True,
        # Drafts on every step that can (1-grams match almost always): the speculative-decoding panel has data.
        "extraArgs": [
            "--speculative-config",
            '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}',
        ],
    },
    "server": {"maxNumQueuedReqs": 6},
}
LOAD_CLIENTS = 10
LOAD_SECONDS = 25.0
RATE_WINDOW = "1m"
KSM_TEXT = 'kube_deployment_status_replicas_available{namespace="llm",deployment="pagedserve"} 1\n'


@dataclass
class Stack:
    server_port: int
    prometheus: str
    model: str
    load: LoadResult
    at: float  # evaluation time: the end of the load


def chart_server_args() -> list[str]:
    deployment = one(render([CI_VALUES_DIR / "cpu-values.yaml"], values=CHART_VALUES), "Deployment")
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert server["command"] == ["pagedserve", "serve"]
    return list(server["args"])


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    args = chart_server_args()
    assert args[args.index("--max-model-len") + 1] == "1024"
    assert args[args.index("--kv-cache-memory-bytes") + 1] == "268435456"
    with running_server(tmp_path_factory.mktemp("server"), args) as port:
        yield port


@pytest.fixture(scope="module")
def served_model(server_port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{server_port}/v1/models", timeout=10).json()["data"][0]["id"]


@pytest.fixture(scope="module")
def stack(
    server_port: int, served_model: str, prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus")
    with static_metrics_server(KSM_TEXT) as ksm_port:
        with running_prometheus(
            prometheus_binary, workdir, server_port, ksm_port, rendered_rules()
        ) as prometheus:
            time.sleep(3)  # a few idle scrapes before the load
            load = run_load(server_port, served_model, LOAD_CLIENTS, LOAD_SECONDS)
            at = time.time()
            time.sleep(3)  # let the last samples up to `at` land
            yield Stack(server_port, prometheus, served_model, load, at)


def test_stream_through_nginx_arrives_unbuffered(
    nginx_binary: Path, tmp_path: Path, server_port: int, served_model: str
) -> None:
    body = {
        "model": served_model,
        "messages": [{"role": "user", "content": "Count from one to fifty."}],
        # 128 tokens outlast 0.5 s at the 110 tok/s this server reached on an AVX2 CPU (48 did not).
        "max_tokens": 128,
        "ignore_eos": True,
        "stream": True,
    }
    with running_nginx(
        nginx_binary, tmp_path / "nginx", server_port, proxy_directives(ingress_annotations())
    ) as port:
        arrivals: list[float] = []
        started = time.monotonic()
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data:") and '"content"' in line:
                    arrivals.append(time.monotonic() - started)
        ended = time.monotonic() - started
    assert len(arrivals) >= 20, arrivals
    generation = ended - arrivals[0]
    assert generation > 0.5, f"too fast to tell buffering apart: {arrivals}"
    # Content chunks arrive while the response is still being generated, spread over the generation.
    assert arrivals[0] < ended - generation * 0.8
    assert arrivals[len(arrivals) // 2] < ended - generation * 0.25, (arrivals, ended)


def test_server_exports_every_metric_the_deployment_names(server_port: int) -> None:
    text = httpx.get(f"http://127.0.0.1:{server_port}/metrics", timeout=10).text
    exported: set[str] = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    used: set[str] = set()
    for _, expr in dashboard_queries():
        used |= metric_names(expr)
    for group in rendered_rules()["groups"]:
        for rule in group["rules"]:
            used |= metric_names(rule["expr"])
    for rule in adapter_rules():
        used |= metric_names(rule["seriesQuery"])
    keda = one(render([CI_VALUES_DIR / "keda-values.yaml"]), "ScaledObject")
    used |= metric_names(keda["spec"]["triggers"][0]["metadata"]["query"])
    missing = sorted(name for name in used - EXTERNAL_METRICS if family_of(name, exported) is None)
    assert not missing, f"named by the deployment but not exported by pagedserve serve: {missing}"


def test_load_queued_and_refused_requests(stack: Stack) -> None:
    assert stack.load.statuses.get(200, 0) >= 5, stack.load.statuses
    assert stack.load.statuses.get(503, 0) >= 1, f"no request was refused: {stack.load.statuses}"
    assert stack.load.statuses.get(404, 0) + stack.load.statuses.get(400, 0) >= 1, stack.load.statuses


def test_adapter_rules_serve_the_pod_queue(stack: Stack) -> None:
    matchers = f'namespace="{TARGET_LABELS["namespace"]}",pod=~"{TARGET_LABELS["pod"]}"'
    for rule in adapter_rules():
        [series] = metric_names(rule["seriesQuery"])
        assert instant_query(stack.prometheus, rule["seriesQuery"], stack.at), (
            f"no series for {rule['seriesQuery']}"
        )
        query = rule["metricsQuery"].replace("<<.Series>>", series)
        query = query.replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
        result = instant_query(stack.prometheus, query, stack.at)
        assert [s["metric"] for s in result] == [{"pod": TARGET_LABELS["pod"]}], (query, result)
        assert all(v >= 0 and v == int(v) for v in sample_values(result)), result
        peak = sample_values(instant_query(stack.prometheus, f"max_over_time(({query})[40s:1s])", stack.at))
        assert peak and peak[0] >= 1, f"{adapter_exposed_name(rule, series)} never rose under load: {peak}"
        assert peak[0] <= 6, f"{series} above the admitted limit: {peak}"


def test_alert_value_queries_return_sane_values(stack: Stack) -> None:
    checks = {
        "PagedserveQueueSaturated": lambda v: 0 <= v <= 6,
        "PagedserveKVCacheHigh": lambda v: 0 <= v <= 1,
        "PagedserveTTFTHigh": lambda v: 0 < v < 300,
        "PagedserveErrorRateHigh": lambda v: 0 < v < 1,
        "PagedserveNoReadyReplicas": lambda v: v == 1,
        "PagedserveTargetDown": lambda v: v == 1,
        "PagedserveTargetMissing": lambda v: v == 1,
    }
    for group in rendered_rules()["groups"]:
        for rule in group["rules"]:
            values = sample_values(instant_query(stack.prometheus, alert_value_query(rule["expr"]), stack.at))
            assert values and finite(values), (
                f"{rule['alert']}: {alert_value_query(rule['expr'])} -> {values}"
            )
            assert all(checks[rule["alert"]](v) for v in values), f"{rule['alert']}: insane values {values}"
    # A healthy, present target: the target alerts' full expressions are empty.
    for rule in rendered_rules()["groups"][0]["rules"]:
        if rule["alert"] in {"PagedserveTargetDown", "PagedserveTargetMissing", "PagedserveNoReadyReplicas"}:
            assert instant_query(stack.prometheus, rule["expr"], stack.at) == [], rule["alert"]


def test_prometheus_evaluates_every_rule_without_error(stack: Stack) -> None:
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 7
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_dashboard_queries_return_sane_values(stack: Stack) -> None:
    bounds = {"percentunit": (0.0, 1.0), "s": (0.0, 300.0), "reqps": (0.0, 1000.0), "short": (0.0, 100_000.0)}
    units = {panel["title"]: panel["fieldConfig"]["defaults"]["unit"] for panel in dashboard()["panels"]}
    for title, expr in dashboard_queries():
        query = (
            expr.replace("$namespace", TARGET_LABELS["namespace"])
            .replace("$model_name", ".*")
            .replace("$__rate_interval", RATE_WINDOW)
        )
        values = sample_values(instant_query(stack.prometheus, query, stack.at))
        assert values, f"panel {title!r}: no series for {query}"
        low, high = bounds[units[title]]
        assert finite(values) and all(low <= v <= high for v in values), (
            f"panel {title!r}: {query} -> {values}"
        )
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            selector = variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
            selector = selector.replace("$namespace", TARGET_LABELS["namespace"])
            assert instant_query(stack.prometheus, selector, stack.at), (
                f"variable {variable['name']} finds nothing"
            )


def test_keda_query_returns_the_release_queue(stack: Stack) -> None:
    keda = one(render([CI_VALUES_DIR / "keda-values.yaml"]), "ScaledObject")
    query = keda["spec"]["triggers"][0]["metadata"]["query"]
    values = sample_values(instant_query(stack.prometheus, query, stack.at))
    assert len(values) == 1 and 0 <= values[0] <= 6, (query, values)
