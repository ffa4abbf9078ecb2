"""Structured outputs through the official `openai` SDK against a real server with the bundled model: every
constrained answer validates (jsonschema), bad grammars are 400s that leave the server healthy, and a
cancellation storm of constrained streams returns every KV block."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from .conftest import ServerProcess, assert_aborted_and_idle, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "integer", "minimum": 0},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Invent a user of a web shop and describe them."}]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chat_json_schema_validates(sdk: OpenAI, temperature: float) -> None:
    response = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=200,
        temperature=temperature,
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_chat_json_object_parses(sdk: OpenAI) -> None:
    # json_object bounds nothing: ask for a small object, or a 135M model may write one string until max_tokens
    # (it did after other modules had filled the prefix cache, which changes greedy near-ties).
    small = [{"role": "user", "content": 'Reply with a JSON object with one key "ok" set to true.'}]
    response = sdk.chat.completions.create(
        model=MODEL,
        messages=small,  # type: ignore[arg-type]
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},  # type: ignore[arg-type]
    )
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_choice_and_regex_on_both_endpoints(sdk: OpenAI, endpoint: str) -> None:
    choices = ["positive", "negative", "neutral"]
    pattern = r"[A-Z][a-z]{2,8} [0-9]{2}"
    for constraint, check in (
        ({"choice": choices}, lambda text: text in choices),
        ({"regex": pattern}, lambda text: re.fullmatch(pattern, text) is not None),
    ):
        body = {"structured_outputs": constraint}
        if endpoint == "chat":
            messages = [{"role": "user", "content": "Is 'I love it' positive? Answer."}]
            out = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, extra_body=body)  # type: ignore[arg-type]
            text = out.choices[0].message.content or ""
        else:
            completion = sdk.completions.create(
                model=MODEL, prompt="Review: great. Label:", max_tokens=20, extra_body=body
            )
            text = completion.choices[0].text
        assert check(text), (constraint, text)


def test_streamed_json_equals_plain(sdk: OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "max_tokens": 200,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    }
    plain = sdk.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert streamed == plain


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "fancy"}},
                }
            },
            "structured_outputs",
        ),
        ({"structured_outputs": {"regex": "[a-z"}}, "structured_outputs"),
        ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs"),
        ({"structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
        ({"structured_outputs": {"jsonn": {}}}, "structured_outputs.jsonn"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"logit_bias": {"9999999": 10}}, "logit_bias"),  # past the vocabulary
    ],
)
def test_bad_constraints_are_400_and_the_server_stays_healthy(
    server: ServerProcess, extra: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"], error
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    ok = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_sdk_raises_bad_request_for_an_invalid_schema(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(
            model=MODEL, prompt="x", max_tokens=4, extra_body={"structured_outputs": {"json": {"type": 5}}}
        )


def test_cancellation_storm_of_constrained_streams_returns_every_block(server: ServerProcess) -> None:
    aborts_before = metric_value(server, "vllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "messages": ASK,
        "max_tokens": 1000,
        "stream": True,
        "temperature": 1.0,
        # At least 1500 characters: the grammar cannot be complete (nor EOS allowed) before the client gives up.
        "structured_outputs": {"regex": "[a-z ]{1500,2000}"},
    }

    async def cut(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            # Headers come once the request has its first token, i.e. it is in the engine: then the client
            # reads for one more second and gives up (a client cut while its grammar still compiles is never
            # admitted, so it would not count as an abort).
            assert response.status_code == 200

            async def drain() -> None:
                async for _ in response.aiter_lines():
                    pass

            try:
                await asyncio.wait_for(drain(), 1.0)
            except asyncio.TimeoutError:
                return
        raise AssertionError("a constrained request finished before the client cut it")

    async def storm() -> None:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=40)
        ) as c:
            await asyncio.gather(*(cut(c) for _ in range(20)))

    asyncio.run(storm())
    assert_aborted_and_idle(server, aborts_before, 20)


def test_structured_requests_and_compile_times_are_counted(sdk: OpenAI, server: ServerProcess) -> None:
    before = metric_value(server, "vllm:structured_output_requests_total", kind="regex")
    compiles = metric_value(server, "vllm:structured_output_compile_seconds_count")
    pattern = f"[0-9]{{{3 + int(time.time()) % 1000}}}"  # new to this server: a real compile, not a cache hit
    sdk.completions.create(
        model=MODEL, prompt="Digits:", max_tokens=2, extra_body={"structured_outputs": {"regex": pattern}}
    )
    deadline = time.monotonic() + 5
    while metric_value(server, "vllm:structured_output_requests_total", kind="regex") == before:
        assert time.monotonic() < deadline, "the finished request was not counted"
        time.sleep(0.05)
    assert metric_value(server, "vllm:structured_output_compile_seconds_count") == compiles + 1
