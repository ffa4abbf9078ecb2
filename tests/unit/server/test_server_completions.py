"""/v1/completions over the fake engine: prompt shapes, n, echo, logprobs, streaming."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from .conftest import MODEL
from .sse import parse_sse


def complete(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/completions", json={"model": MODEL, **fields})


def test_single_prompt_shape(client: TestClient, tokenizer: Any) -> None:
    body = complete(client, prompt="The sky is", max_tokens=5, temperature=0).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode("The sky is"))
    assert body["usage"]["completion_tokens"] == 5


def test_default_max_tokens_is_16(client: TestClient) -> None:
    body = complete(client, prompt="x", ignore_eos=True).json()
    assert body["usage"]["completion_tokens"] == 16


def test_list_prompt_with_n2_indexes_choices(client: TestClient) -> None:
    body = complete(client, prompt=["one", "two", "three"], n=2, max_tokens=3).json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert body["usage"]["completion_tokens"] == 18


def test_token_id_prompts_equal_text_prompts(client: TestClient, tokenizer: Any) -> None:
    ids = tokenizer.encode("The sky is")
    from_text = complete(client, prompt="The sky is", max_tokens=4).json()["choices"][0]["text"]
    from_ids = complete(client, prompt=ids, max_tokens=4).json()["choices"][0]["text"]
    batch = complete(client, prompt=[ids, ids], max_tokens=4).json()["choices"]
    assert from_text == from_ids == batch[0]["text"] == batch[1]["text"]


def test_echo_prepends_prompt(client: TestClient, tokenizer: Any) -> None:
    plain = complete(client, prompt="Hello there", max_tokens=3).json()["choices"][0]["text"]
    echoed = complete(client, prompt="Hello there", max_tokens=3, echo=True).json()["choices"][0]["text"]
    assert echoed == "Hello there" + plain
    ids = tokenizer.encode("Hello there")
    echoed_ids = complete(client, prompt=ids, max_tokens=3, echo=True).json()["choices"][0]["text"]
    assert echoed_ids == tokenizer.decode(ids) + plain


def test_logprobs_shape_and_offsets(client: TestClient) -> None:
    choice = complete(client, prompt="Hi", max_tokens=4, logprobs=2).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 4
    assert "".join(logprobs["tokens"]) == choice["text"]
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and all(
        b - a == len(t) for a, b, t in zip(offsets, offsets[1:], logprobs["tokens"])
    )
    assert all(len(top) >= 2 for top in logprobs["top_logprobs"])


def test_echo_with_logprobs_includes_prompt_positions(client: TestClient, tokenizer: Any) -> None:
    ids = tokenizer.encode("Hello there friend")
    body = complete(client, prompt=ids, max_tokens=2, logprobs=1, echo=True).json()
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 2
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp is not None for lp in logprobs["token_logprobs"][1:])


def test_stream_matches_plain_and_has_usage(client: TestClient) -> None:
    fields = {"prompt": ["a", "b"], "max_tokens": 5, "n": 2}
    plain = complete(client, **fields).json()
    events = parse_sse(complete(client, **fields, stream=True, stream_options={"include_usage": True}).text)
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    for choice in plain["choices"]:
        mine = [c for e in chunks for c in e["choices"] if c["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine][-1] == "length"
        assert [c["finish_reason"] for c in mine].count("length") == 1


def test_stream_echo_and_logprobs(client: TestClient) -> None:
    events = parse_sse(complete(client, prompt="Hi", max_tokens=3, echo=True, logprobs=0, stream=True).text)
    text = "".join(c["text"] for e in events for c in e["choices"])
    tokens = [t for e in events for c in e["choices"] for t in (c["logprobs"] or {}).get("tokens", [])]
    assert text.startswith("Hi") and "".join(tokens) == text


def test_stop_token_ids_end_generation(client: TestClient, tokenizer: Any) -> None:
    first = complete(client, prompt="Hi", max_tokens=5).json()["choices"][0]["text"]
    stop_id = tokenizer.encode(first, add_special_tokens=False)[1]
    choice = complete(client, prompt="Hi", max_tokens=5, stop_token_ids=[stop_id]).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop_id


def test_tokenize_returns_token_strings_on_request(client: TestClient, tokenizer: Any) -> None:
    body = {"model": MODEL, "prompt": "The sky is blue"}
    plain = client.post("/tokenize", json=body).json()
    assert "token_strs" not in plain
    spelled = client.post("/tokenize", json={**body, "return_token_strs": True}).json()
    assert spelled["tokens"] == plain["tokens"]
    assert spelled["token_strs"] == tokenizer.convert_ids_to_tokens(plain["tokens"])
    assert "".join(spelled["token_strs"]).replace("Ġ", " ") == "The sky is blue"
