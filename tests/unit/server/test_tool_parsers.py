"""Tool-call output parsers (--tool-call-parser hermes, llama3_json, pythonic, mistral, granite): whole-text
parsing, and streaming that, reassembled from arbitrary splits, agrees with it."""

from __future__ import annotations

import json
import random
import re

import pytest

from pagedserve.server.tool_parsers import (
    TOOL_PARSERS,
    GraniteToolParser,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    Phi4MiniJsonToolParser,
    PythonicToolParser,
    Qwen3CoderToolParser,
    ToolParser,
    get_tool_parser,
)

ID_RE = re.compile(r"chatcmpl-tool-[0-9a-f]{32}|[A-Za-z0-9]{9}")
Calls = list[tuple[str, str]]


def hermes_call(name: str, args: object) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n</tool_call>"


def args_text(args: object) -> str:
    return json.dumps(args, ensure_ascii=False)


WEATHER = {"city": "東京", "unit": "celsius", "note": "☀️ «ok»"}
NESTED = {"filter": {"tags": ["a", {"b": [1, 2.5, None, True]}], "s": "}{;</tool_call"}, "n": -3}

HERMES_TEXTS = [
    "",
    "   \n",
    "Hello, world!",
    "a < b and <tool_ but not <tool_call",
    "ends with a partial marker <tool_c",
    hermes_call("get_weather", WEATHER),
    "\n\n" + hermes_call("get_weather", WEATHER),
    "Let me check.\n" + hermes_call("f", {"x": 1}) + "\n" + hermes_call("g", NESTED),
    hermes_call("f", {}) + " dropped text " + hermes_call("g", {"s": "<tool_call>"}) + " tail",
    '<tool_call>\n{"name": "f", "arguments": {"x": [1, 2]}}',
    'Sure <tool_call>\n{"name": "f", "arguments": {bad}}\n</tool_call> and more',
    'Hi <tool_call>{"arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>',
    '<tool_call>{"name": "f"}</tool_call>',
    "<tool_call>\n",
    '<tool_call>\n{"name": "f", "arguments": {"x"',
]

LLAMA_TEXTS = [
    "",
    "  ",
    "The answer is 42.",
    '{"name": "get_weather", "parameters": ' + args_text(WEATHER) + "}",
    '<|python_tag|>{"name": "f", "parameters": {"a": 1}}',
    '  <|python_tag|> {"name": "f", "arguments": '
    + args_text(NESTED)
    + '};  {"name": "g", "parameters": {}}',
    '{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"s": "}{;"}};',
    'Here you go: {"name": "f", "parameters": {}}',
    '{"name": "f", "parameters": {}} trailing',
    '{"name": "f", "parameters": {',
    '{"answer": 42}',
    "<|python",
    "<|python_tag|>",
    "<|python_tag|>hello",
    '{"name": "f"}',
    '{"name": "f", "parameters": {}}\n<|eom_id|>',
]

PYTHONIC_TEXTS = [
    "",
    "  \n",
    "The answer is 42.",
    "[1] Paris is the capital.",
    "[]",
    "[get_weather(city='東京', unit=\"celsius\", days=3)]",
    "  [f(a=1, b=[1, 2.5, None, True], c={'k': ('x', 'y')}), g()]",
    "<|python_start|>[f(s='])}[', n=-3)]<|python_end|>",
    "[f(a=1)] and then some text",
    "Sure: [f(a=1)]",
    "[f(1)]",
    "[f(a=x)]",
    "[f(**kw)]",
    "[f(a={1, 2})]",
    "[f(a=float('nan'))]",
    "[os.system(cmd='x')]",
    "[f(a=1), ",
    "[f(a=1)",
    "[get_weather (city='Paris')]",
    "<|python_start|>",
    "<|python_st",
]

MISTRAL_TEXTS = [
    "",
    "  \n",
    "No tools needed: 42.",
    "ends with a partial marker [TOOL_CA",
    '[TOOL_CALLS][{"name": "get_weather", "arguments": ' + args_text(WEATHER) + "}]",
    'Let me look.[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": '
    + args_text(NESTED)
    + "}]",
    '[TOOL_CALLS]{"name": "f", "arguments": {}}',
    "[TOOL_CALLS]get_weather[ARGS]" + args_text(WEATHER),
    'Checking.[TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]' + args_text(NESTED),
    "[TOOL_CALLS]f[ARGS]{}[TOOL_CALLS]bad name[ARGS]{}",
    '[TOOL_CALLS][{"name": "f", "arguments": {}}] trailing',
    '[TOOL_CALLS][{"name": "f", "arguments": {bad}}]',
    "[TOOL_CALLS]",
    '[TOOL_CALLS]f[ARGS]{"a": ',
    "[TOOL_CALLS]f[ARGS][1, 2]",
    "  [TOOL_CALLS]f[ARGS]{} then text",
]

GRANITE_TEXTS = [
    "",
    "  ",
    "Plain answer.",
    '<|tool_call|>[{"name": "get_weather", "arguments": ' + args_text(WEATHER) + "}]",
    ' <tool_call> [{"name": "f", "arguments": {}}, {"name": "g", "arguments": ' + args_text(NESTED) + "}]",
    '[{"name": "f", "arguments": {"x": 1}}]',
    '<|tool_call|>[{"name": "f", "arguments": {}}] and text',
    "<|tool_call|>",
    "<|tool_ca",
    '<|tool_call|>{"name": "f", "arguments": {}}',
    "[1, 2]",
    '<|tool_call|>[{"name": "f", "arguments": {',
]

PHI4_TEXTS = [
    "",
    "The answer is 42.",
    'functools[{"name": "get_weather", "arguments": ' + args_text(WEATHER) + "}]",
    ' functools [{"name": "f", "arguments": {}}, {"name": "g", "arguments": ' + args_text(NESTED) + "}]",
    '[{"name": "f", "arguments": {}}]',
    'functools[{"name": "f", "arguments": {}}] and more',
    "functool",
    "functools",
]


def coder_call(name: str, **params: str) -> str:
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


QWEN3_CODER_TEXTS = [
    "",
    " \n",
    "Plain answer, no tools.",
    "ends with a partial marker <tool_ca",
    coder_call("get_weather", city="東京", days="3"),
    "I'll check.\n" + coder_call("f", x="1") + "\n" + coder_call("g", code="if a < b:\n    return '</x>'"),
    "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n",
    "<tool_call>\n<function=f>\n<parameter=a>\n1",
    "<tool_call>\nnot a function\n</tool_call>",
    coder_call("f", x="1") + "<tool_call>garbage</tool_call> tail",
    "<tool_call>",
]

CASES = (
    [(HermesToolParser, t) for t in HERMES_TEXTS]
    + [(Llama3JsonToolParser, t) for t in LLAMA_TEXTS]
    + [(PythonicToolParser, t) for t in PYTHONIC_TEXTS]
    + [(MistralToolParser, t) for t in MISTRAL_TEXTS]
    + [(GraniteToolParser, t) for t in GRANITE_TEXTS]
    + [(Phi4MiniJsonToolParser, t) for t in PHI4_TEXTS]
    + [(Qwen3CoderToolParser, t) for t in QWEN3_CODER_TEXTS]
)


def run_stream(cls: type[ToolParser], chunks: list[str]) -> tuple[str | None, Calls]:
    """Feed chunks, reassemble content and calls, and check the delta invariants on the way."""
    parser = cls()
    messages = [parser.extract_tool_calls_streaming(c) for c in chunks] + [parser.finish()]
    content = ""
    calls: list[dict[str, str]] = []
    for msg in messages:
        if msg is None:
            continue
        assert msg.content or msg.tool_calls, "empty DeltaMessage instead of None"
        content += msg.content or ""
        for delta in msg.tool_calls:
            if delta.index == len(calls):
                assert delta.id and ID_RE.fullmatch(delta.id) and delta.name
                assert not delta.arguments
                calls.append({"id": delta.id, "name": delta.name, "args": ""})
            else:
                assert delta.index == len(calls) - 1 and delta.id is None and delta.name is None
                calls[delta.index]["args"] += delta.arguments or ""
    assert [c.id for c in parser.tool_calls] == [c["id"] for c in calls]
    assert parser.finish() is None
    return content or None, [(c["name"], c["args"]) for c in calls]


def whole(cls: type[ToolParser], text: str) -> tuple[str | None, Calls]:
    result = cls().extract_tool_calls(text)
    assert result.tools_called == bool(result.tool_calls)
    assert all(ID_RE.fullmatch(c.id) for c in result.tool_calls)
    return result.content or None, [(c.name, c.arguments) for c in result.tool_calls]


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


def test_pythonic_calls_become_json_arguments() -> None:
    content, calls = whole(PythonicToolParser, PYTHONIC_TEXTS[6])
    assert content is None
    assert calls == [
        ("f", args_text({"a": 1, "b": [1, 2.5, None, True], "c": {"k": ["x", "y"]}})),
        ("g", "{}"),
    ]
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[5]) == (
        None,
        [("get_weather", args_text({"city": "東京", "unit": "celsius", "days": 3}))],
    )
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[7]) == (None, [("f", args_text({"s": "])}[", "n": -3}))])
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[18])[1] == [("get_weather", args_text({"city": "Paris"}))]


@pytest.mark.parametrize("index", [2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19])
def test_pythonic_not_calls_is_content(index: int) -> None:
    """Text around the list, positional or non-literal arguments, values without a JSON form, attribute calls and
    unfinished lists are all plain content (never evaluated)."""
    text = PYTHONIC_TEXTS[index]
    assert whole(PythonicToolParser, text) == (text, [])


def test_pythonic_streams_content_as_soon_as_it_cannot_be_a_call_list() -> None:
    parser = PythonicToolParser()
    assert parser.extract_tool_calls_streaming("[get_weather(city=") is None  # held: may be a call
    parser = PythonicToolParser()
    msg = parser.extract_tool_calls_streaming("[1] Par")
    assert msg is not None and msg.content == "[1] Par" and not msg.tool_calls


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


def test_qwen3_coder_types_values_by_the_tools_schema() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "run",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"}, "times": {"type": "integer"}, "scale": {"type": "number"},
                        "dry": {"type": "boolean"}, "env": {"type": "object"}, "tags": {"type": "array"},
                        "limit": {"type": ["integer", "null"]},
                    },
                },
            },
        }
    ]  # fmt: skip
    text = "Running it.\n" + coder_call(
        "run", code="print(1)\nprint(2)", times="3", scale="0.5", dry="True", env='{"A": "1"}',
        tags="['x', 'y']", limit="null", extra="42",
    )  # fmt: skip
    result = Qwen3CoderToolParser(tools).extract_tool_calls(text)
    assert result.content == "Running it.\n" and [c.name for c in result.tool_calls] == ["run"]
    assert json.loads(result.tool_calls[0].arguments) == {
        "code": "print(1)\nprint(2)", "times": 3, "scale": 0.5, "dry": True, "env": {"A": "1"},
        "tags": ["x", "y"], "limit": None, "extra": "42",
    }  # fmt: skip
    # A parameter or tool the request did not describe keeps its text (vLLM: typed by the schema only).
    untyped = Qwen3CoderToolParser().extract_tool_calls(coder_call("f", n="3", s="hello"))
    assert json.loads(untyped.tool_calls[0].arguments) == {"n": "3", "s": "hello"}


def test_qwen3_coder_blocks_and_content() -> None:
    content, calls = whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[5])
    assert content == "I'll check.\n" and [name for name, _ in calls] == ["f", "g"]
    assert json.loads(calls[1][1]) == {"code": "if a < b:\n    return '</x>'"}
    assert whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[8]) == (QWEN3_CODER_TEXTS[8], [])
    content, calls = whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[9])  # a bad block after a sent call
    assert [name for name, _ in calls] == ["f"] and content == "<tool_call>garbage</tool_call> tail"
