"""Shared by the tool-call parser tests (test_tool_parsers*.py): sample model outputs for each parser, and the
whole-text and streaming runs whose results they compare."""

from __future__ import annotations

import json
import re

from pagedserve.server.tool_parsers import (
    GraniteToolParser,
    HermesToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    Phi4MiniJsonToolParser,
    PythonicToolParser,
    Qwen3CoderToolParser,
    ToolParser,
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
