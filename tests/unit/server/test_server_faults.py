"""Engine death and a wedged engine, seen through HTTP: clients get errors (SSE error event then [DONE]),
/health turns 503, the server asks to exit non-zero; /ready turns 503 while a step is stuck."""

from __future__ import annotations

import time

import pytest

from pagedserve.engine.faults import INJECT_FAILURE_ENV, INJECT_HANG_ENV

from .conftest import make_client, wait_ready
from .sse import parse_sse


def test_engine_death_mid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_FAILURE_ENV, "6")  # the warm-up takes 1 step
    with make_client() as client:
        wait_ready(client)
        state = client.app.state.pagedserve
        response = client.post(
            "/v1/completions", json={"prompt": "x", "max_tokens": 50, "ignore_eos": True, "stream": True}
        )
        events = parse_sse(response.text)
        assert "error" in events[-1] and events[-1]["error"]["type"] == "server_error"
        assert "Traceback" not in response.text
        deadline = time.monotonic() + 2
        while client.get("/health").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get("/ready").status_code == 503
        after = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert after.status_code == 500 and after.json()["error"]["code"] == "engine_dead"
        deadline = time.monotonic() + 5
        while not state.exit_requested.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state.exit_code == 1 and state.in_flight == 0


def test_engine_death_non_streaming_is_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_FAILURE_ENV, "4")
    with make_client() as client:
        wait_ready(client)
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 500
        assert response.json()["error"] == {
            "message": "The engine stopped; the server is restarting.",
            "type": "server_error",
            "param": None,
            "code": "engine_dead",
        }


def test_wedged_engine_turns_unready_then_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_HANG_ENV, "3")
    with make_client({"ready_stall_seconds": 1.0}, stall_timeout=1.5) as client:
        wait_ready(client)
        started = time.monotonic()
        response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 30, "stream": True})
        waited = time.monotonic() - started
        assert response.status_code == 200 and "error" in parse_sse(response.text)[-1]
        assert 1.0 < waited < 5
        assert client.get("/health").status_code == 503 or client.app.state.pagedserve.engine_died


def test_ready_reports_a_stall_before_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INJECT_HANG_ENV, "3")
    with make_client({"ready_stall_seconds": 1.0}, stall_timeout=30) as client:
        wait_ready(client)
        # The client of the stuck request leaves at once: readiness must still notice the wedged step.
        stuck = client.app.state.pagedserve.engine.generate({"prompt_token_ids": [1, 2]}, _params(), "stuck")
        client.portal.call(stuck.__anext__)  # type: ignore[union-attr]
        client.portal.call(stuck.aclose)  # type: ignore[union-attr]
        deadline = time.monotonic() + 4
        while client.get("/ready").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = client.get("/ready").json()
        assert "no progress" in ready["error"]["message"]
        assert client.get("/health").status_code == 200  # alive but unready: traffic goes elsewhere


def _params():  # type: ignore[no-untyped-def]
    from pagedserve.sampling_params import SamplingParams

    return SamplingParams(max_tokens=50, ignore_eos=True)
