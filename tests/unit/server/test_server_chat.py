"""/v1/chat/completions over the fake engine: response and streaming shapes, n, logprobs, ids."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from .conftest import MODEL
from .sse import parse_sse

USER = [{"role": "user", "content": "Say hello."}]


def chat(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})


def test_chat_response_shape_and_usage(client: TestClient, tokenizer: Any) -> None:
    response = chat(client, max_tokens=8, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    prompt_ids = tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer.encode(prompt_ids, add_special_tokens=False))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 8,
        "total_tokens": prompt_tokens + 8,
    }
    assert len(tokenizer.encode(choice["message"]["content"], add_special_tokens=False)) == 8


def test_max_completion_tokens_wins_over_max_tokens(client: TestClient) -> None:
    body = chat(client, max_tokens=3, max_completion_tokens=5).json()
    assert body["usage"]["completion_tokens"] == 5


def test_no_max_tokens_runs_to_eos(client: TestClient) -> None:
    body = chat(client).json()
    assert body["choices"][0]["finish_reason"] == "stop"


def test_text_content_parts_equal_plain_string(client: TestClient) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]
    with_parts = client.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 4}).json()
    plain = chat(client, max_tokens=4).json()
    assert with_parts["usage"] == plain["usage"]
    assert with_parts["choices"][0]["message"] == plain["choices"][0]["message"]


def test_stream_shape_with_usage(client: TestClient) -> None:
    response = chat(client, max_tokens=6, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    first, *middle, finish, usage = events
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert finish["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in middle)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    plain = chat(client, max_tokens=6).json()["choices"][0]["message"]["content"]
    assert streamed == plain


def test_stream_without_usage_has_no_usage_chunk(client: TestClient) -> None:
    events = parse_sse(chat(client, max_tokens=3, stream=True).text)
    assert all("usage" not in e for e in events) and all(e["choices"] for e in events)


def test_stream_n2_each_choice_complete(client: TestClient) -> None:
    events = parse_sse(chat(client, max_tokens=4, n=2, temperature=1.0, stream=True).text)
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        reasons = [c["finish_reason"] for c in mine]
        assert reasons.count("length") == 1 and reasons[-1] == "length"


def test_chat_logprobs_shape(client: TestClient) -> None:
    body = chat(client, max_tokens=4, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert isinstance(entry["token"], str) and entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]


def test_stream_logprobs_cover_every_token(client: TestClient) -> None:
    events = parse_sse(chat(client, max_tokens=5, logprobs=True, stream=True).text)
    tokens = [t for e in events for t in ((e["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert len(tokens) == 5


def test_x_request_id_echoed_and_used(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers={"x-request-id": "abc-123"}
    )
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["id"] == "chatcmpl-abc-123"
    # The same client id twice at once must not collide inside the engine.
    again = client.post(
        "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers={"x-request-id": "abc-123"}
    )
    assert again.status_code == 200
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) >= 16


def test_unusable_request_id_replaced(client: TestClient) -> None:
    response = client.get("/health", headers={"x-request-id": "bad id with spaces " + "x" * 300})
    assert " " not in response.headers["x-request-id"] and len(response.headers["x-request-id"]) <= 128


def test_stop_string_cuts_text(client: TestClient) -> None:
    full = chat(client, max_tokens=8).json()["choices"][0]["message"]["content"]
    word = full.split()[2]
    body = chat(client, max_tokens=8, stop=[word]).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == word
    assert word not in choice["message"]["content"] and full.startswith(choice["message"]["content"])


def test_unknown_fields_ignored(client: TestClient) -> None:
    assert chat(client, max_tokens=2, tools_whatever={"x": 1}, repetition_penalty=1.0).status_code == 200


def test_server_flag_names_logprob_tokens_by_id_unless_a_request_says_no(client_factory: Any) -> None:
    flagged = client_factory({"return_tokens_as_token_ids": True})
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "logprobs": True,
    }
    content = flagged.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert content and all(entry["token"].startswith("token_id:") for entry in content)
    mine = flagged.post("/v1/chat/completions", json={**body, "return_tokens_as_token_ids": False}).json()
    assert not any(e["token"].startswith("token_id:") for e in mine["choices"][0]["logprobs"]["content"])
    text = flagged.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "logprobs": 1}
    )
    assert all(token.startswith("token_id:") for token in text.json()["choices"][0]["logprobs"]["tokens"])


def test_continuous_usage_stats_put_the_running_usage_in_every_chunk(client: TestClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = parse_sse(chat(client, max_tokens=5, stream=True, stream_options=options).text)
    *chunks, final = events
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 5
    counts = [event["usage"]["completion_tokens"] for event in chunks]
    assert counts[0] == 0 and counts == sorted(counts) and counts[-1] == 5  # the role chunk, then growing
    assert all(
        e["usage"]["total_tokens"] == e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"]
        for e in chunks
    )
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True, "stream_options": options}
    *text_chunks, text_final = parse_sse(client.post("/v1/completions", json=body).text)
    assert (
        [e["usage"]["completion_tokens"] for e in text_chunks][-1]
        == text_final["usage"]["completion_tokens"]
        == 4
    )
    # Without include_usage, continuous_usage_stats adds nothing (vLLM's rule).
    plain = parse_sse(
        chat(client, max_tokens=3, stream=True, stream_options={"continuous_usage_stats": True}).text
    )
    assert all("usage" not in event for event in plain)
