"""Tool-call output parsers (--tool-call-parser hermes, llama3_json, pythonic, mistral, granite, phi4_mini_json,
qwen3_coder): the registry, and streaming that, reassembled from arbitrary splits, agrees with whole-text parsing.
Each format's own whole-text cases: test_tool_parsers_json.py, _pythonic.py and _qwen3_coder.py."""

from __future__ import annotations

import random

import pytest

from pagedserve.server.tool_parsers import (
    TOOL_PARSERS,
    HermesToolParser,
    Llama3JsonToolParser,
    PythonicToolParser,
    ToolParser,
    get_tool_parser,
)

from .tool_parser_cases import (
    CASES,
    HERMES_TEXTS,
    LLAMA_TEXTS,
    hermes_call,
    run_stream,
    whole,
)


def test_registry() -> None:
    assert set(TOOL_PARSERS) == {
        "granite", "hermes", "llama3_json", "llama4_json", "llama4_pythonic", "mistral", "phi4_mini_json", "pythonic",
        "qwen3_coder",
    }  # fmt: skip
    assert get_tool_parser("llama4_pythonic") is PythonicToolParser
    assert get_tool_parser("hermes") is HermesToolParser
    assert get_tool_parser("llama3_json") is Llama3JsonToolParser
    with pytest.raises(
        ValueError,
        match=r"--tool-call-parser 'nope' is not one of: granite, hermes, llama3_json, llama4_json",
    ):
        get_tool_parser("nope")


def test_streaming_emits_content_early() -> None:
    parser = HermesToolParser()
    msg = parser.extract_tool_calls_streaming("Hello <tool_")
    assert msg is not None and msg.content == "Hello " and not msg.tool_calls
    assert parser.extract_tool_calls_streaming('call>{"name": "f", "arguments": {}}') is None
    msg = parser.extract_tool_calls_streaming("</tool_call>")
    assert msg is not None and msg.content is None
    assert [(d.index, d.name, d.arguments) for d in msg.tool_calls] == [(0, "f", ""), (0, None, "{}")]


def test_missing_arguments_mean_empty_object() -> None:
    for cls, text in [(HermesToolParser, HERMES_TEXTS[13]), (Llama3JsonToolParser, LLAMA_TEXTS[14])]:
        assert whole(cls, text) == (None, [("f", "{}")])


def test_streaming_invalid_call_after_a_sent_call() -> None:
    """The only case where streaming can't match: a call already sent can't be taken back, so the calls
    before the invalid one stay and the rest streams as content (non-streaming: all content)."""
    text = hermes_call("f", {}) + "<tool_call>{oops}</tool_call>!"
    assert whole(HermesToolParser, text) == (text, [])
    assert run_stream(HermesToolParser, [text]) == ("<tool_call>{oops}</tool_call>!", [("f", "{}")])
    text = '{"name": "f", "parameters": {}}; [1]'
    assert whole(Llama3JsonToolParser, text) == (text, [])
    assert run_stream(Llama3JsonToolParser, [text]) == ("[1]", [("f", "{}")])


def test_llama3_streaming_waits_for_separator_or_end() -> None:
    parser = Llama3JsonToolParser()
    assert parser.extract_tool_calls_streaming('<|python_tag|>{"name": "f", "parameters": {"a": 1}}') is None
    msg = parser.extract_tool_calls_streaming(" ;")
    assert msg is not None and [(d.index, d.name, d.arguments) for d in msg.tool_calls] == [
        (0, "f", ""),
        (0, None, '{"a": 1}'),
    ]
    assert parser.extract_tool_calls_streaming(' {"name": "g", "parameters": {}}') is None
    msg = parser.finish()
    assert msg is not None and msg.content is None and [d.name for d in msg.tool_calls] == ["g", None]


@pytest.mark.parametrize(("cls", "text"), CASES)
def test_streaming_matches_whole(cls: type[ToolParser], text: str) -> None:
    expected = whole(cls, text)
    assert run_stream(cls, [text]) == expected
    assert run_stream(cls, list(text)) == expected
    for i in range(len(text) + 1):
        assert run_stream(cls, [text[:i], text[i:]]) == expected, i
    rng = random.Random(text)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert run_stream(cls, chunks) == expected, cuts
