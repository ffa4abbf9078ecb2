"""Tool-call parsers of JSON calls (hermes, llama3_json, mistral, granite, phi4_mini_json): whole-text parsing."""

from __future__ import annotations

import json

import pytest

from pagedserve.server.tool_parsers import (
    GraniteToolParser,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    Phi4MiniJsonToolParser,
)

from .tool_parser_cases import (
    GRANITE_TEXTS,
    HERMES_TEXTS,
    LLAMA_TEXTS,
    MISTRAL_TEXTS,
    NESTED,
    PHI4_TEXTS,
    WEATHER,
    args_text,
    hermes_call,
    whole,
)


def test_hermes_single_call() -> None:
    result = HermesToolParser().extract_tool_calls(hermes_call("get_weather", {"city": "Paris"}))
    assert result.tools_called and result.content is None
    [call] = result.tool_calls
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')


def test_hermes_several_calls_with_content() -> None:
    text = HERMES_TEXTS[7]
    result = HermesToolParser().extract_tool_calls(text)
    assert result.content == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("f", {"x": 1}), ("g", NESTED)]
    assert len({c.id for c in result.tool_calls}) == 2


def test_hermes_blank_content_is_none_and_unicode_kept() -> None:
    result = HermesToolParser().extract_tool_calls(HERMES_TEXTS[6])
    assert result.content is None
    assert result.tool_calls[0].arguments == args_text(WEATHER)
    assert "東京" in result.tool_calls[0].arguments


@pytest.mark.parametrize("text", [HERMES_TEXTS[10], HERMES_TEXTS[11], HERMES_TEXTS[15]])
def test_hermes_invalid_is_content(text: str) -> None:
    result = HermesToolParser().extract_tool_calls(text)
    assert (result.tools_called, result.tool_calls, result.content) == (False, [], text)


def test_llama3_calls() -> None:
    result = Llama3JsonToolParser().extract_tool_calls(LLAMA_TEXTS[5])
    assert result.tools_called and result.content is None
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", args_text(NESTED)), ("g", "{}")]
    [call] = Llama3JsonToolParser().extract_tool_calls(LLAMA_TEXTS[3]).tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", WEATHER)


@pytest.mark.parametrize("text", [LLAMA_TEXTS[i] for i in (2, 7, 8, 9, 10, 11, 12, 13, 15)])
def test_llama3_not_calls_is_content(text: str) -> None:
    result = Llama3JsonToolParser().extract_tool_calls(text)
    assert (result.tools_called, result.tool_calls, result.content) == (False, [], text)


def test_mistral_both_formats_and_nine_character_ids() -> None:
    content, calls = whole(MistralToolParser, MISTRAL_TEXTS[5])
    assert content == "Let me look." and [name for name, _ in calls] == ["f", "g"]
    assert json.loads(calls[1][1]) == NESTED
    content, calls = whole(MistralToolParser, MISTRAL_TEXTS[8])
    assert content == "Checking." and calls == [("f", '{"a": 1}'), ("g", args_text(NESTED))]
    result = MistralToolParser().extract_tool_calls(MISTRAL_TEXTS[7])
    # Mistral's chat templates accept back only 9-character alphanumeric tool call ids.
    assert [len(c.id) for c in result.tool_calls] == [9] and result.tool_calls[0].id.isalnum()
    assert MistralToolParser.keeps_special_tokens and not GraniteToolParser.keeps_special_tokens


@pytest.mark.parametrize("index", [2, 3, 10, 11, 12, 13, 14])
def test_mistral_not_calls_is_content(index: int) -> None:
    text = MISTRAL_TEXTS[index]
    assert whole(MistralToolParser, text) == (text or None, [])


def test_mistral_invalid_call_after_a_sent_one_streams_the_rest_as_content() -> None:
    content, calls = whole(MistralToolParser, MISTRAL_TEXTS[9])
    assert calls == [("f", "{}")] and content == "bad name[ARGS]{}"


def test_granite_calls_and_content() -> None:
    assert whole(GraniteToolParser, GRANITE_TEXTS[3]) == (None, [("get_weather", args_text(WEATHER))])
    _, calls = whole(GraniteToolParser, GRANITE_TEXTS[4])
    assert [name for name, _ in calls] == ["f", "g"]
    for index in (2, 6, 7, 8, 9, 10, 11):
        assert whole(GraniteToolParser, GRANITE_TEXTS[index]) == (GRANITE_TEXTS[index], []), index


def test_phi4_mini_needs_its_functools_tag() -> None:
    assert whole(Phi4MiniJsonToolParser, PHI4_TEXTS[2]) == (None, [("get_weather", args_text(WEATHER))])
    assert [name for name, _ in whole(Phi4MiniJsonToolParser, PHI4_TEXTS[3])[1]] == ["f", "g"]
    for index in (1, 4, 5, 6, 7):  # a bare array is content for Phi-4-mini (Granite's tag is optional)
        assert whole(Phi4MiniJsonToolParser, PHI4_TEXTS[index]) == (PHI4_TEXTS[index], []), index
