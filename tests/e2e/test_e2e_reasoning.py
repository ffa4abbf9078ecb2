"""--reasoning-parser on a real server. The bundled model does not think, so a regex (structured outputs) makes it
write a <think> block: the parser must move that block to `reasoning`, plainly and streamed, through the SDK."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "What is two plus two?"}]
THINKING = {"structured_outputs": {"regex": "<think>[a-z ]{8,30}</think>The answer is [0-9]+[.]"}}


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
def test_think_block_goes_to_reasoning(start_server: Callable[..., ServerProcess], parser: str) -> None:
    server = start_server("--reasoning-parser", parser)
    sdk = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=40,
        temperature=0,
        extra_body=THINKING,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
    assert message.content is not None and message.content.startswith("The answer is ")

    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=40,
        temperature=0,
        stream=True,
        extra_body=THINKING,  # type: ignore[arg-type]
    )
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    streamed_reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert streamed_reasoning == reasoning
    assert "".join(d.content or "" for d in deltas) == message.content

    hidden = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, temperature=0,  # type: ignore[arg-type]
        extra_body={**THINKING, "include_reasoning": False},
    )  # fmt: skip
    assert (hidden.choices[0].message.model_extra or {}).get("reasoning") is None
    assert hidden.choices[0].message.content == message.content
    # A JSON answer (its grammar opens no think block) is all content, whichever parser (deepseek_r1's "reasoning
    # until </think>" would file it all as reasoning).
    json_reply = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=30, temperature=0,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert (json_reply.choices[0].message.content or "").lstrip().startswith("{")
    assert (json_reply.choices[0].message.model_extra or {}).get("reasoning") is None
    if parser == "qwen3":  # without a think block (thinking off), qwen3's parser leaves everything in content
        plain = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert plain.choices[0].message.content
        assert (plain.choices[0].message.model_extra or {}).get("reasoning") is None
