"""Every row of reliability.md's bad-input table: status, error type, param; bounded bodies that never echo
the input. Both generation endpoints where a row applies to both."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import MODEL

MAX_MODEL_LEN = 512
SECRET = "SECRET-PROMPT-TEXT-93"
USER = [{"role": "user", "content": SECRET}]


def assert_error(response: Any, status: int, param: str | None = "?", code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert len(response.content) <= 1024 + 200
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= 1024
    assert SECRET not in response.text and "Traceback" not in response.text and "/work/" not in response.text
    expected_type = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large"}[status]
    assert error["type"] == expected_type
    if param != "?":
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert response.headers.get("x-request-id")
    return error


def chat(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})


def complete(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/completions", json={"model": MODEL, "prompt": SECRET, **fields})


ENDPOINTS = {"chat": chat, "completions": complete}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_at_max_model_len_refused(client: TestClient, endpoint: str) -> None:
    if endpoint == "chat":
        response = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello " * MAX_MODEL_LEN}]}
        )
    else:
        response = client.post("/v1/completions", json={"prompt": [100] * MAX_MODEL_LEN, "max_tokens": 1})
    error = assert_error(response, 400, code="context_length_exceeded")
    assert error["message"].startswith(f"This model's maximum context length is {MAX_MODEL_LEN} tokens.")
    assert client.app.state.pagedserve.in_flight == 0  # nothing stays queued


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_plus_max_tokens_over_limit(client: TestClient, endpoint: str) -> None:
    error = assert_error(ENDPOINTS[endpoint](client, max_tokens=MAX_MODEL_LEN), 400, "max_tokens")
    assert error["code"] == "context_length_exceeded" and "However, you requested" in error["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("value", [0, -1, 1.5, "10", 2**63, 2**70, True])
def test_bad_max_tokens(client: TestClient, endpoint: str, value: Any) -> None:
    assert_error(ENDPOINTS[endpoint](client, max_tokens=value), 400, "max_tokens")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_null_max_tokens_means_rest_of_context(client: TestClient, endpoint: str) -> None:
    response = ENDPOINTS[endpoint](client, max_tokens=None)
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("raw", ["-0.5", "NaN", "Infinity", "-Infinity", "2.5", '"1"'])
def test_bad_temperature(client: TestClient, endpoint: str, raw: str) -> None:
    body = {"model": MODEL, "messages": USER} if endpoint == "chat" else {"model": MODEL, "prompt": SECRET}
    text = json.dumps(body)[:-1] + f', "temperature": {raw}}}'
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    response = client.post(path, content=text, headers={"content-type": "application/json"})
    assert_error(response, 400, "temperature")


SAMPLING_ROWS = [
    ("top_p", 0), ("top_p", 1.5), ("top_p", -0.1),
    ("top_k", -2), ("top_k", 1.5),
    ("min_p", -0.1), ("min_p", 1.5),
    ("presence_penalty", 2.5), ("presence_penalty", -3),
    ("frequency_penalty", 3), ("frequency_penalty", -2.5),
    ("repetition_penalty", 0), ("repetition_penalty", -1),
    ("n", 0), ("n", -1), ("n", 17),
    ("seed", "abc"),
    ("min_tokens", -1),
]  # fmt: skip


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("field", "value"), SAMPLING_ROWS)
def test_bad_sampling_field(client: TestClient, endpoint: str, field: str, value: Any) -> None:
    assert_error(ENDPOINTS[endpoint](client, **{field: value}), 400, field)


def test_top_logprobs_over_20(client: TestClient) -> None:
    assert_error(chat(client, logprobs=True, top_logprobs=21), 400, "top_logprobs")
    assert_error(chat(client, logprobs=True, top_logprobs=-1), 400, "top_logprobs")


def test_completion_logprobs_over_20(client: TestClient) -> None:
    assert_error(complete(client, logprobs=21), 400, "logprobs")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stop", ["", [""], ["ok", ""], [1], 5, [None]])
def test_bad_stop(client: TestClient, endpoint: str, stop: Any) -> None:
    assert_error(ENDPOINTS[endpoint](client, stop=stop), 400, "stop")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("ids", [[-1], [10**9]])
def test_bad_stop_token_ids(client: TestClient, endpoint: str, ids: list[int]) -> None:
    assert_error(ENDPOINTS[endpoint](client, stop_token_ids=ids), 400, "stop_token_ids")


@pytest.mark.parametrize("prompt", [[-1, 5], [5, 49152], [[5], [10**12]], [[1, 2], []]])
def test_bad_prompt_token_ids(client: TestClient, prompt: Any) -> None:
    assert_error(client.post("/v1/completions", json={"prompt": prompt}), 400, "prompt")


@pytest.mark.parametrize("prompt", ["", [], [""], [[]], None, 5, [1.5], {"a": 1}])
def test_empty_or_malformed_prompt(client: TestClient, prompt: Any) -> None:
    assert_error(client.post("/v1/completions", json={"prompt": prompt}), 400)


def test_missing_prompt(client: TestClient) -> None:
    assert_error(client.post("/v1/completions", json={"max_tokens": 3}), 400, "prompt")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        None,
        "hello",
        [{"content": "no role"}],
        [{"role": "wizard", "content": "x"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": 5}],
        ["not an object"],
    ],
)
def test_bad_messages(client: TestClient, messages: Any) -> None:
    response = client.post("/v1/chat/completions", json={"messages": messages})
    error = assert_error(response, 400)
    assert error["param"] is not None and error["param"].startswith("messages")


def test_missing_messages(client: TestClient) -> None:
    assert_error(client.post("/v1/chat/completions", json={"max_tokens": 3}), 400, "messages")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"])
@pytest.mark.parametrize(
    "raw",
    [
        b"{bad json",
        b"\xff\xfe\x00garbage",
        b'"a string"',
        b"[1, 2]",
        b"42",
        b"null",
        b"",
        b'{"prompt": "\xff"}',
    ],
)
def test_malformed_bodies(client: TestClient, path: str, raw: bytes) -> None:
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_model(client: TestClient, endpoint: str) -> None:
    assert_error(ENDPOINTS[endpoint](client, model="gpt-17"), 404, "model", "model_not_found")


def test_unknown_model_on_tokenize(client: TestClient) -> None:
    assert_error(client.post("/tokenize", json={"model": "nope", "prompt": "x"}), 404, "model")


def test_unsupported_completion_options(client: TestClient) -> None:
    assert_error(complete(client, suffix="tail"), 400, "suffix")
    assert_error(complete(client, best_of=3), 400, "best_of")


def test_detokenize_out_of_vocab(client: TestClient) -> None:
    assert_error(client.post("/detokenize", json={"tokens": [1, -5]}), 400, "tokens")


def test_unknown_path_is_openai_404(client: TestClient) -> None:
    assert_error(client.get("/v1/nope"), 404)


def test_bad_input_leaves_nothing_in_flight(client: TestClient) -> None:
    state = client.app.state.pagedserve
    assert state.in_flight == 0
    assert state.engine.num_unfinished_requests == 0
