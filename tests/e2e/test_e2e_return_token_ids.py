"""vLLM's return_token_ids on a real server: the generated ids with each choice (each chunk's own ids when
streaming) and the prompt's ids once, on chat and completions."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
CHAT = [{"role": "user", "content": "Count to five."}]
IDS = {"return_token_ids": True}


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}{path}", json={"model": MODEL, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def stream(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = []
    with httpx.stream(
        "POST", f"{server.url}{path}", json={"model": MODEL, "stream": True, **body}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks


def detokenize(server: ServerProcess, tokens: list[int]) -> str:
    return post(server, "/detokenize", {"tokens": tokens})["prompt"]


def test_completions_return_prompt_and_generated_ids(server: ServerProcess) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "n": 2, **IDS}
    plain = post(server, "/v1/completions", body)
    prompt_ids = post(server, "/tokenize", {"prompt": body["prompt"]})["tokens"]
    for choice in plain["choices"]:
        assert choice["prompt_token_ids"] == prompt_ids
        assert len(choice["token_ids"]) == 8 and detokenize(server, choice["token_ids"]) == choice["text"]
    streamed = stream(server, "/v1/completions", body)
    for index in (0, 1):
        parts = [c["choices"][0] for c in streamed if c["choices"] and c["choices"][0]["index"] == index]
        assert [p["prompt_token_ids"] for p in parts if "prompt_token_ids" in p] == [prompt_ids]  # once
        assert sum((p["token_ids"] for p in parts), []) == plain["choices"][index]["token_ids"]
    assert (
        "token_ids" not in post(server, "/v1/completions", {**body, "return_token_ids": False})["choices"][0]
    )


def test_chat_returns_prompt_and_generated_ids(server: ServerProcess) -> None:
    body = {"messages": CHAT, "max_tokens": 10, "temperature": 0, **IDS}
    plain = post(server, "/v1/chat/completions", body)
    assert plain["prompt_token_ids"] == post(server, "/tokenize", {"messages": CHAT})["tokens"]
    [choice] = plain["choices"]
    assert len(choice["token_ids"]) == plain["usage"]["completion_tokens"]
    assert detokenize(server, choice["token_ids"]).startswith(choice["message"]["content"])
    streamed = stream(server, "/v1/chat/completions", body)
    assert [c["prompt_token_ids"] for c in streamed if "prompt_token_ids" in c] == [plain["prompt_token_ids"]]
    assert "token_ids" not in streamed[0]["choices"][0]  # the role chunk holds no token
    ids = sum((c["choices"][0].get("token_ids", []) for c in streamed if c["choices"]), [])
    assert ids == choice["token_ids"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    assert text == choice["message"]["content"]


def test_logprobs_name_tokens_by_id_on_request(server: ServerProcess) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2}
    plain = post(server, "/v1/completions", {**body, "return_token_ids": True})["choices"][0]
    named = post(server, "/v1/completions", {**body, "return_tokens_as_token_ids": True})["choices"][0]
    assert named["logprobs"]["tokens"] == [f"token_id:{t}" for t in plain["token_ids"]]
    assert all(key.startswith("token_id:") for top in named["logprobs"]["top_logprobs"] for key in top)
    chat = post(
        server,
        "/v1/chat/completions",
        {"messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2,
         "return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    content = chat["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in content] == [f"token_id:{t}" for t in chat["choices"][0]["token_ids"]]
    assert all(alt["token"].startswith("token_id:") for entry in content for alt in entry["top_logprobs"])


def test_prompt_logprobs_field(server: ServerProcess) -> None:
    prompt = "The capital of France is"
    ids = post(server, "/tokenize", {"prompt": prompt})["tokens"]
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2}
    choice = post(server, "/v1/completions", body)["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    for token_id, entry in zip(ids[1:], entries[1:]):
        assert str(token_id) in entry and 1 <= len(entry) <= 3  # the prompt's token and the top 2
        assert all(
            value["rank"] >= 1 and value["logprob"] <= 0 and "decoded_token" in value
            for value in entry.values()
        )
    # The same numbers as echo's logprobs for the prompt (one engine, one forward).
    echo = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True,
                                            "logprobs": 0})["choices"][0]["logprobs"]["token_logprobs"]  # fmt: skip
    assert [e[str(t)]["logprob"] for t, e in zip(ids[1:], entries[1:])] == pytest.approx(echo[1 : len(ids)])
    chat = post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1, "prompt_logprobs": 0})
    assert (
        len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"] and chat["prompt_logprobs"][0] is None
    )
    streamed = httpx.post(
        f"{server.url}/v1/completions", json={"model": MODEL, **body, "stream": True}, timeout=60
    )
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"
