"""/metrics: every family in METRIC_FAMILIES with its type, labels and buckets; counters that match the
requests sent; two apps in one process do not share a registry."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from pagedserve.server import metrics as m

from .conftest import MODEL
from .metrics_text import families, value

ENGINE_LABELS = {"model_name": MODEL, "engine": "0"}
BUCKETS = {
    "vllm:time_to_first_token_seconds": m.TTFT_BUCKETS,
    "vllm:inter_token_latency_seconds": m.TOKEN_LATENCY_BUCKETS,
    "vllm:request_time_per_output_token_seconds": m.TOKEN_LATENCY_BUCKETS,
    "vllm:e2e_request_latency_seconds": m.REQUEST_LATENCY_BUCKETS,
    "vllm:request_queue_time_seconds": m.REQUEST_LATENCY_BUCKETS,
    "vllm:request_inference_time_seconds": m.REQUEST_LATENCY_BUCKETS,
    "vllm:request_prefill_time_seconds": m.REQUEST_LATENCY_BUCKETS,
    "vllm:request_decode_time_seconds": m.REQUEST_LATENCY_BUCKETS,
    "vllm:request_prompt_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    "vllm:request_generation_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    "vllm:iteration_tokens_total": (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
    "vllm:request_params_n": (1, 2, 5, 10, 20),
    "vllm:request_num_preemptions": (1, 2, 3, 4, 5, 10, 20),
}
SPEC_TTFT = ".001 .005 .01 .02 .04 .06 .08 .1 .25 .5 .75 1 2.5 5 7.5 10 20 40 80 160 640 2560"
SPEC_TOKEN = ".01 .025 .05 .075 .1 .15 .2 .3 .4 .5 .75 1 2.5 5 7.5 10 20 40 80"
SPEC_REQUEST = ".3 .5 .8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680"


@pytest.fixture(scope="module")
def fresh(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory()


def test_bucket_constants_match_the_spec() -> None:
    assert m.TTFT_BUCKETS == tuple(float(x) for x in SPEC_TTFT.split())
    assert m.TOKEN_LATENCY_BUCKETS == tuple(float(x) for x in SPEC_TOKEN.split())
    assert m.REQUEST_LATENCY_BUCKETS == tuple(float(x) for x in SPEC_REQUEST.split())
    assert m.one_two_five_buckets(512) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert m.one_two_five_buckets(2048)[-1] == 5000


def test_every_family_present_with_type_and_labels(fresh: TestClient) -> None:
    fresh.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3})
    fresh.app.state.pagedserve.metrics.reject("queue_full")  # make the labelled counter appear
    found = families(fresh.get("/metrics").text)
    for name, kind in m.METRIC_FAMILIES.items():
        assert name in found, name
        assert found[name][0] == kind, (name, found[name][0])
        if name.startswith("vllm:"):
            for sample in found[name][1]:
                assert {k: sample.labels.get(k) for k in ENGINE_LABELS} == ENGINE_LABELS, sample
    for name, buckets in BUCKETS.items():
        les = [s.labels["le"] for s in found[name][1] if s.name.endswith("_bucket")]
        assert les == [str(float(b)) for b in buckets] + ["+Inf"], name
    assert not any(name.startswith(("vllm:gpu_", "vllm:time_per_output_token")) for name in found)
    info = [s for s in found["vllm:cache_config_info"][1] if s.name == "vllm:cache_config_info"][0]
    assert info.value == 1 and info.labels["block_size"] == "16" and info.labels["num_gpu_blocks"] == "512"
    assert info.labels["cache_dtype"] == "float32"


def test_counters_match_requests_sent(fresh: TestClient, tokenizer: object) -> None:
    before = fresh.get("/metrics").text
    prompts = ["alpha beta", "gamma", "delta epsilon zeta"]
    for prompt in prompts:
        assert fresh.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4}).status_code == 200
    fresh.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2})
    after = fresh.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts) + len(tokenizer.encode("x"))  # type: ignore[attr-defined]
    assert delta("vllm:request_success_total", finished_reason="length") == 4
    assert delta("vllm:generation_tokens_total") == 3 * 4 + 2 * 2
    assert delta("vllm:prompt_tokens_total") == prompt_tokens
    assert delta("vllm:e2e_request_latency_seconds_count") == 4
    assert delta("vllm:time_to_first_token_seconds_count") == 4
    assert delta("vllm:request_params_n_sum") == 1 + 1 + 1 + 2
    assert delta("vllm:request_generation_tokens_sum") == 16
    assert delta("http_requests_total", handler="/v1/completions", method="POST", status="2xx") == 4
    assert delta("http_request_duration_seconds_count", handler="/v1/completions", method="POST") == 4
    assert value(after, "vllm:num_requests_running") == 0 and value(after, "vllm:kv_cache_usage_perc") == 0


def test_warmup_is_not_counted(client_factory: Callable[..., TestClient]) -> None:
    text = client_factory().get("/metrics").text
    assert value(text, "vllm:request_success_total") == 0
    assert value(text, "vllm:generation_tokens_total") == 0


def test_unmatched_routes_use_handler_none(fresh: TestClient) -> None:
    fresh.get("/no/such/path")
    text = fresh.get("/metrics").text
    assert value(text, "http_requests_total", handler="none", status="4xx") >= 1
    assert value(text, "http_requests_total", handler="/metrics") == 0


def test_two_apps_have_separate_registries(client_factory: Callable[..., TestClient]) -> None:
    one, two = client_factory(), client_factory()
    one.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert value(one.get("/metrics").text, "vllm:request_success_total") == 1
    assert value(two.get("/metrics").text, "vllm:request_success_total") == 0
