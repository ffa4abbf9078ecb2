"""The official `openai` SDK against a real server: chat (plain, streaming with usage), completions with a
list prompt and n=2, logprobs, the model list, and 16 concurrent streaming chats."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI, OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Say hello in three words."}]


def test_models_list(sdk: OpenAI) -> None:
    models = sdk.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by and models[0].created > 0
    extra = models[0].model_extra or {}
    assert extra["max_model_len"] == 2048 and extra["root"]


def test_chat_plain(sdk: OpenAI) -> None:
    response = sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None and 0 < response.usage.completion_tokens <= 12


def test_chat_streaming_with_usage_equals_plain(sdk: OpenAI) -> None:
    plain = sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    stream = sdk.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content and finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_completions_list_prompt_n2(sdk: OpenAI) -> None:
    response = sdk.completions.create(
        model=MODEL,
        prompt=["The capital of France is", "One, two, three,"],
        n=2,
        max_tokens=6,
        temperature=0.8,
        seed=1,
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    assert all(c.text for c in response.choices)
    assert response.usage is not None and response.usage.completion_tokens <= 4 * 6


def test_completion_logprobs(sdk: OpenAI) -> None:
    response = sdk.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=3
    )
    logprobs = response.choices[0].logprobs
    assert (
        logprobs is not None
        and logprobs.tokens
        and len(logprobs.tokens) == len(logprobs.token_logprobs or [])
    )
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs or [])
    assert all(top and len(top) >= 1 for top in logprobs.top_logprobs or [])


def test_chat_logprobs(sdk: OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )  # type: ignore[call-overload]
    content = response.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(entry.top_logprobs) == 2 for entry in content)
    # Greedy: the sampled token is the most likely one.
    assert all(entry.top_logprobs[0].token == entry.token for entry in content)


def test_sixteen_concurrent_streaming_chats(server: ServerProcess) -> None:
    async def one(client: AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write a word number {i}."}],
            max_tokens=16, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage

    async def run_all() -> list[tuple[str, int]]:
        async with AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(run_all())
    assert len(results) == 16 and all(0 < usage <= 16 for _, usage in results)
