"""--reasoning-parser on a real server. The bundled model does not think, so a regex (structured outputs) makes it
write a <think> block: qwen3's parser must move that block to `reasoning`, plainly and streamed, through the SDK.
("<think>" is several tokens in the bundled vocabulary, so qwen3's grammar starts at once: the regex writes the
block. The grammar waiting for the block's end is tested on real matchers in tests/unit/structured_output.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "What is two plus two?"}]
THINKING = {"structured_outputs": {"regex": "<think>[a-z ]{8,30}</think>The answer is [0-9]+[.]"}}


def test_think_block_goes_to_reasoning(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--reasoning-parser", "qwen3")
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
    # A JSON answer (its grammar opens no think block) is all content.
    json_reply = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=30, temperature=0,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert (json_reply.choices[0].message.content or "").lstrip().startswith("{")
    assert (json_reply.choices[0].message.model_extra or {}).get("reasoning") is None
    # Without a think block (thinking off), qwen3's parser leaves everything in content.
    plain = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert plain.choices[0].message.content
    assert (plain.choices[0].message.model_extra or {}).get("reasoning") is None


def test_deepseek_r1_reads_unclosed_thinking_as_reasoning(start_server: Callable[..., ServerProcess]) -> None:
    """DeepSeek-R1's template opens <think> in the prompt, so until "</think>" everything is reasoning; the
    bundled model never writes it, so its whole answer is reasoning and content stays null, plain and streamed."""
    server = start_server("--reasoning-parser", "deepseek_r1")
    sdk = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    reply = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    assert reasoning and message.content is None
    stream = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0, stream=True)  # type: ignore[arg-type]
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == reasoning
    assert not "".join(d.content or "" for d in deltas)
    # The Responses API files it as a reasoning item before an empty message.
    response = sdk.responses.create(model=MODEL, input=ASK[0]["content"], max_output_tokens=12, temperature=0)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == reasoning  # type: ignore[union-attr]


def test_granite_markers_split_reasoning_from_content(start_server: Callable[..., ServerProcess]) -> None:
    """Granite 3.2 / 3.3's plain-text markers (--reasoning-parser granite), written here by a regex: the thought goes
    to `reasoning` and the response to `content`, plainly and streamed, neither marker in either."""
    server = start_server("--reasoning-parser", "granite")
    sdk = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    granite = {
        "structured_outputs": {
            "regex": "Here is my thought process: [a-z ]{8,30}[.] Here is my response: The answer is [0-9]+[.]"
        }
    }
    reply = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=60, temperature=0, extra_body=granite,  # type: ignore[arg-type]
    )  # fmt: skip
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    assert reasoning and "thought process" not in reasoning and reasoning.endswith(". ")
    assert message.content is not None and message.content.startswith(" The answer is ")
    stream = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=60, temperature=0, stream=True, extra_body=granite,  # type: ignore[arg-type]
    )  # fmt: skip
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == reasoning
    assert "".join(d.content or "" for d in deltas) == message.content
