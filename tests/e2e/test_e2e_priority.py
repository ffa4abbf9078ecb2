"""vLLM's priority scheduling on a real server: with --scheduling-policy priority a waiting request with a lower
`priority` value is admitted first, whatever its arrival; without the flag a non-zero priority is a 400."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from .conftest import ServerProcess, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]


def wait_for(server: ServerProcess, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while metric_value(server, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_a_more_urgent_request_overtakes_the_queue(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--scheduling-policy", "priority", "--max-num-seqs", "1")
    finished: list[str] = []

    def complete(name: str, priority: int, max_tokens: int) -> None:
        body = {
            "prompt": f"Request {name}:",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "priority": priority,
        }
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        finished.append(name)

    threads = []
    for name, priority, max_tokens, waiting in (
        ("blocker", 0, 150, 0),
        ("relaxed", 10, 4, 1),
        ("urgent", -5, 4, 2),
    ):
        thread = threading.Thread(target=complete, args=(name, priority, max_tokens))
        thread.start()
        threads.append(thread)
        # One slot: the blocker runs, the others wait (the relaxed one first in arrival order).
        wait_for(server, "vllm:num_requests_running", 1)
        wait_for(server, "vllm:num_requests_waiting", waiting)
    for thread in threads:
        thread.join(timeout=120)
    assert finished == ["blocker", "urgent", "relaxed"]


def test_priority_without_the_policy_is_refused(server: ServerProcess) -> None:
    body = {"prompt": "Hi", "max_tokens": 2, "priority": 3}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "priority", response.text
    assert (
        httpx.post(f"{server.url}/v1/completions", json={**body, "priority": 0}, timeout=60).status_code
        == 200
    )
