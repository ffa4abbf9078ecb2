"""vLLM's front-end flags (ServerConfig): --response-role, --enable-force-include-usage, --disable-fastapi-docs,
CORS (--allowed-origins ...) and --max-logprobs' 400, on the app with the fake engine
(tests/e2e/test_e2e_vllm_manifest_flags.py runs them on a real server)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import MODEL
from .sse import parse_sse

USER = [{"role": "user", "content": "Hello"}]


def test_response_role_names_the_messages(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory({"response_role": "bot"})
    body = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 3}
    ).json()
    assert body["choices"][0]["message"]["role"] == "bot"
    stream = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 3, "stream": True}
    )
    assert parse_sse(stream.text)[0]["choices"][0]["delta"]["role"] == "bot"


def test_force_include_usage_adds_the_usage_chunk_unasked(client_factory: Callable[..., TestClient]) -> None:
    forced, plain = client_factory({"enable_force_include_usage": True}), client_factory()
    for path, fields in (
        ("/v1/chat/completions", {"messages": USER}),
        ("/v1/completions", {"prompt": "Hello"}),
    ):
        request = {"model": MODEL, "max_tokens": 4, "stream": True, **fields}
        events = parse_sse(forced.post(path, json=request).text)
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
        assert all("usage" in e for e in events)  # every chunk too (vLLM's newer rule: continuous usage)
        assert events[-2]["usage"]["completion_tokens"] == 4
        assert all("usage" not in e for e in parse_sse(plain.post(path, json=request).text))


def test_docs_are_served_unless_disabled(client_factory: Callable[..., TestClient]) -> None:
    plain, bare = client_factory(), client_factory({"disable_fastapi_docs": True})
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert plain.get(path).status_code == 200, path
        assert bare.get(path).status_code == 404, path
    assert bare.get("/v1/models").status_code == 200


def test_logprobs_past_max_logprobs_are_400_with_vllms_wording(client: TestClient) -> None:
    chat = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": USER, "max_tokens": 2, "logprobs": True, "top_logprobs": 21},
    )
    assert chat.status_code == 400
    error = chat.json()["error"]
    assert error["message"] == "Requested sample logprobs of 21, which is greater than max allowed: 20"
    assert error["param"] == "top_logprobs" and error["type"] == "invalid_request_error"
    completion = client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "prompt_logprobs": 25}
    )
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "prompt_logprobs"
    within = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": USER, "max_tokens": 2, "logprobs": True, "top_logprobs": 20},
    )
    assert within.status_code == 200


def test_cors_allows_any_origin_by_default_and_the_preflight_needs_no_key(
    client_factory: Callable[..., TestClient],
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    open_server = client_factory({"api_key": "k"})  # vLLM's defaults: any origin, method, header
    answer = open_server.options("/v1/chat/completions", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    assert open_server.get("/v1/models", headers={"Origin": "https://app.example"}).status_code == 401
    strict = client_factory({"allowed_origins": ["https://ok.example"], "allow_credentials": True})
    assert strict.options("/v1/chat/completions", headers=preflight).status_code == 400
    allowed = strict.options("/v1/chat/completions", headers={**preflight, "Origin": "https://ok.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://ok.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"


def test_chat_template_content_format_reaches_the_renderer() -> None:
    """--chat-template-content-format goes with every chat, /tokenize and /v1/responses rendering (the renderer's
    own behaviour: tests/unit/engine/test_chat_template.py)."""
    from .conftest import make_client, wait_ready

    holder: dict[str, Any] = {}
    with make_client({"chat_template_content_format": "string"}, holder=holder) as client:
        wait_ready(client)
        fake, seen = holder["fake"], []
        render = fake.apply_chat_template

        def recording(messages: Any, options: Any = None, chat_template: Any = None) -> list[int]:
            seen.append((messages[-1]["content"], options.content_format))
            return render(messages, options, chat_template)

        fake.apply_chat_template = recording
        parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        assert (
            client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": parts, "max_tokens": 1}
            ).status_code
            == 200
        )
        assert client.post("/tokenize", json={"model": MODEL, "messages": parts}).status_code == 200
        assert (
            client.post(
                "/v1/responses", json={"model": MODEL, "input": "c", "max_output_tokens": 1}
            ).status_code
            == 200
        )
    texts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert seen == [(texts, "string"), (texts, "string"), ("c", "string")]


def test_openai_content_format_with_a_template_that_wants_strings_is_a_400(
    client_factory: Callable[..., TestClient],
) -> None:
    client = client_factory({"chat_template_content_format": "openai"})  # the bundled template adds strings
    chat = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 1})
    assert chat.status_code == 400 and chat.json()["error"]["message"].startswith("chat template failed")


@pytest.mark.parametrize(
    ("server", "logged"),
    [({}, True), ({"enable_log_requests": True}, True), ({"enable_log_requests": False}, False),
     ({"disable_log_requests": True}, False)],
)  # fmt: skip
def test_request_log_lines_follow_both_spellings(
    client_factory: Callable[..., TestClient], server: dict[str, Any], logged: bool
) -> None:
    """pagedserve logs finished requests by default; vLLM's --no-enable-log-requests turns that off as
    --disable-log-requests does (vLLM's own default is off)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pagedserve")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        client = client_factory(server)
        client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(r.getMessage().startswith("Finished request") for r in records) is logged


def test_embeddings_on_a_generating_model_are_vllms_400(client: TestClient) -> None:
    """/v1/embeddings needs --runner pooling (tests/e2e/test_e2e_embeddings.py serves one)."""
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "Hello"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The model does not support Embeddings API"
