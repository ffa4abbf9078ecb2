"""Admission control (queue cap → 503 + Retry-After), draining, and the request body limit (413)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from .metrics_text import value

SLOW = {"step_delay": 0.02}  # a 30-token request then takes ~0.6 s


def post_in_thread(client: TestClient, results: list[Any], body: dict[str, Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(client.post("/v1/completions", json=body)))
    thread.start()
    return thread


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_queue_full_gets_503_with_retry_after(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory({"max_num_queued_reqs": 2}, engine_kwargs=SLOW)
    state = client.app.state.pagedserve
    admitted: list[Any] = []
    body = {"prompt": "hello", "max_tokens": 30, "ignore_eos": True}
    threads = [post_in_thread(client, admitted, body) for _ in range(2)]
    wait_for(lambda: state.in_flight == 2)
    rejected = [client.post("/v1/completions", json=body) for _ in range(4)]
    # A list prompt that would exceed the cap on its own is refused too.
    rejected.append(client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 1}))
    for thread in threads:
        thread.join()
    assert [r.status_code for r in admitted] == [200, 200]
    for response in rejected:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "queue_full"
    metrics = client.get("/metrics").text
    assert value(metrics, "vllm:admission_rejections_total", reason="queue_full") == 5
    assert state.in_flight == 0
    assert client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 1}).status_code == 200


def test_draining_refuses_new_and_finishes_in_flight(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory({"shutdown_timeout": 10}, engine_kwargs=SLOW)
    state = client.app.state.pagedserve
    results: list[Any] = []
    thread = post_in_thread(client, results, {"prompt": "x", "max_tokens": 25, "ignore_eos": True})
    wait_for(lambda: state.in_flight == 1)
    drain = client.portal.start_task_soon(state.drain)  # type: ignore[union-attr]
    wait_for(lambda: state.draining)
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200
    refused = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"]
    thread.join()
    assert results[0].status_code == 200 and results[0].json()["usage"]["completion_tokens"] == 25
    drain.result(timeout=5)
    assert state.exit_requested.is_set() and state.exit_code == 0
    assert value(client.get("/metrics").text, "vllm:admission_rejections_total", reason="draining") == 1


def test_drain_gives_up_after_shutdown_timeout(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory({"shutdown_timeout": 0.3}, engine_kwargs=SLOW)
    state = client.app.state.pagedserve
    results: list[Any] = []
    thread = post_in_thread(client, results, {"prompt": "x", "max_tokens": 200, "ignore_eos": True})
    wait_for(lambda: state.in_flight == 1)
    started = time.monotonic()
    client.portal.call(state.drain)  # type: ignore[union-attr]
    assert time.monotonic() - started < 2 and state.exit_requested.is_set() and state.exit_code == 0
    thread.join()


def test_body_over_limit_is_413(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory({"max_request_body_bytes": 1000})
    big = {"prompt": "x" * 2000}
    response = client.post("/v1/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large" and "x" * 50 not in response.text

    def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(5):
            yield b"x" * 400

    chunked = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_not_ready_while_loading() -> None:
    """Before the model loads, probes answer (alive, not ready) and generation is 503 model_loading."""
    from pagedserve.server.app import create_app
    from pagedserve.server_config import ServerConfig

    gate = threading.Event()

    def slow_factory() -> Any:
        gate.wait(10)
        raise RuntimeError("model missing")

    with TestClient(create_app(ServerConfig(), slow_factory, ["m"])) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and "loading" in ready.json()["error"]["message"]
        response = client.post("/v1/completions", json={"prompt": "x"})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
        gate.set()
        state = client.app.state.pagedserve
        client.portal.call(asyncio.wait_for, state.exit_requested.wait(), 5)  # type: ignore[union-attr]
        assert state.exit_code == 1 and client.get("/health").status_code == 503


def test_version_reports_the_cpu_and_its_kernels(client: TestClient) -> None:
    """vLLM's {"version"}, plus the CPU the replica runs on: pods on different nodes may choose different paths."""
    from pagedserve import __version__
    from pagedserve.cpu_info import ISA_LEVELS, cpu_info

    body = client.get("/version").json()
    assert body["version"] == __version__
    cpu = body["cpu"]
    assert cpu["arch"] == cpu_info().arch and cpu["features"] == cpu_info().features
    assert cpu["kernel_isa"] in (None, *ISA_LEVELS) and isinstance(cpu["bf16_hardware"], bool)


def test_load_counts_requests_in_flight_when_tracking(client_factory: Callable[..., TestClient]) -> None:
    """vLLM's GET /load: {"server_load": requests in flight} with --enable-server-load-tracking, 0 without."""
    tracked = client_factory({"enable_server_load_tracking": True}, engine_kwargs=SLOW)
    untracked = client_factory({}, engine_kwargs=SLOW)
    for client, counts in ((tracked, True), (untracked, False)):
        assert client.get("/load").json() == {"server_load": 0}
        results: list[Any] = []
        body = {"prompt": "hi", "max_tokens": 30, "ignore_eos": True}
        threads = [post_in_thread(client, results, body) for _ in range(2)]
        if counts:
            wait_for(lambda c=client: c.get("/load").json()["server_load"] == 2)
        else:
            time.sleep(0.2)
            assert client.get("/load").json() == {"server_load": 0}
        for thread in threads:
            thread.join()
        assert [r.status_code for r in results] == [200, 200]
        assert client.get("/load").json() == {"server_load": 0}
