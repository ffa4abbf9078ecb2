"""Tool-choice planning and the assistant message / stream deltas built from model text (no model needed)."""

from __future__ import annotations

import json

import pytest

from pagedserve.sampling_params import SamplingParams
from pagedserve.server.chat_tools import ToolStream, apply_plan, message_and_reason, plan_tools
from pagedserve.server.errors import APIError
from pagedserve.server.openai.protocol import ChatCompletionRequest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


def _body(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS, **fields)


def test_required_schema_lists_every_tool_and_honours_parallel_tool_calls() -> None:
    plan = plan_tools(_body(tool_choice="required", parallel_tool_calls=False), False, None)
    schema = plan.constraint.json  # type: ignore[union-attr]
    assert [item["properties"]["name"]["const"] for item in schema["items"]["anyOf"]] == ["add", "now"]
    assert schema["maxItems"] == 1 and schema["minItems"] == 1
    assert schema["items"]["anyOf"][1]["properties"]["parameters"] == {"type": "object"}


def test_required_answer_becomes_tool_calls() -> None:
    plan = plan_tools(_body(tool_choice="required"), False, None)
    text = json.dumps([{"name": "add", "parameters": {"a": 1}}, {"name": "now", "parameters": {}}])
    message, reason = message_and_reason(plan, text, "stop")
    assert reason == "tool_calls" and message["content"] is None
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]
    ] == [
        ("add", {"a": 1}),
        ("now", {}),
    ]
    cut, reason = message_and_reason(plan, text[:10], "length")  # cut short: the text stays content
    assert cut == {"role": "assistant", "content": text[:10]} and reason == "length"


def test_auto_parses_hermes_calls_and_streams_the_same() -> None:
    plan = plan_tools(_body(), True, "hermes")
    text = 'Let me check.<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    message, reason = message_and_reason(plan, text, "stop")
    assert reason == "tool_calls" and message["content"] == "Let me check."
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2}'}
    stream = ToolStream(plan)
    deltas = [stream.delta(text[i : i + 3]) for i in range(0, len(text), 3)]
    last, final_reason = stream.finish("stop")
    content = "".join(d.get("content", "") for d in [*deltas, last] if d)
    arguments = "".join(
        p["function"].get("arguments", "") for d in [*deltas, last] if d for p in d.get("tool_calls", [])
    )
    assert content == "Let me check." and arguments == '{"a": 2}' and final_reason == "tool_calls"


@pytest.mark.parametrize("parallel", [True, False])
def test_auto_keeps_only_the_first_call_when_parallel_tool_calls_is_false(parallel: bool) -> None:
    """vLLM's rule: with parallel_tool_calls false the calls after the first are dropped, streamed or not."""
    plan = plan_tools(_body(parallel_tool_calls=parallel), True, "hermes")
    text = (
        '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    )
    message, reason = message_and_reason(plan, text, "stop")
    names = [c["function"]["name"] for c in message["tool_calls"]]
    assert names == (["add", "now"] if parallel else ["add"]) and reason == "tool_calls"
    stream = ToolStream(plan)
    deltas = [stream.delta(text[i : i + 5]) for i in range(0, len(text), 5)]
    last, _ = stream.finish("stop")
    streamed = [p for d in [*deltas, last] if d for p in d.get("tool_calls", []) if "name" in p["function"]]
    assert [p["function"]["name"] for p in streamed] == names


def test_auto_parses_pythonic_calls_and_streams_the_same() -> None:
    """Gemma 3 / Llama 3.2 style: the calls arrive when the output ends, as one message or in deltas."""
    plan = plan_tools(_body(), True, "pythonic")
    text = "[add(a=2), now()]"
    message, reason = message_and_reason(plan, text, "stop")
    assert reason == "tool_calls" and message["content"] is None
    assert [c["function"] for c in message["tool_calls"]] == [
        {"name": "add", "arguments": '{"a": 2}'},
        {"name": "now", "arguments": "{}"},
    ]
    stream = ToolStream(plan)
    deltas = [stream.delta(text[i : i + 4]) for i in range(0, len(text), 4)]
    last, final_reason = stream.finish("stop")
    parts = [p for d in [*deltas, last] if d for p in d.get("tool_calls", [])]
    assert [p["function"]["name"] for p in parts if "name" in p["function"]] == ["add", "now"]
    assert final_reason == "tool_calls"


def test_auto_without_a_call_is_plain_content() -> None:
    plan = plan_tools(_body(tool_choice="auto"), True, "llama3_json")
    assert message_and_reason(plan, "Hello there", "stop") == (
        {"role": "assistant", "content": "Hello there"},
        "stop",
    )


@pytest.mark.parametrize(
    ("fields", "auto", "fragment"),
    [
        ({"tool_choice": "auto"}, False, "--enable-auto-tool-choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "sub"}}}, True, "'sub'"),
        ({"tool_choice": "required", "structured_outputs": {"regex": "a"}}, True, "structured_outputs"),
    ],
)
def test_plan_refusals_name_tool_choice(fields, auto, fragment) -> None:
    with pytest.raises(APIError, match=fragment) as caught:
        plan_tools(_body(**fields), auto, "hermes" if auto else None)
    assert caught.value.param == "tool_choice"


def test_mistral_auto_keeps_special_tokens_and_parses_its_marker() -> None:
    """[TOOL_CALLS] is a special token: with tools and the mistral parser the text keeps it (vLLM's adjust_request);
    other parsers, and tool_choice none, leave skip_special_tokens as the request set it."""
    params = SamplingParams()
    apply_plan(plan_tools(_body(), True, "mistral"), params)
    assert params.skip_special_tokens is False
    for plan in (plan_tools(_body(), True, "hermes"), plan_tools(_body(tool_choice="none"), True, "mistral")):
        params = SamplingParams()
        apply_plan(plan, params)
        assert params.skip_special_tokens is True and params.structured_outputs is None
    required = plan_tools(_body(tool_choice="required"), True, "mistral")
    apply_plan(required, params)
    assert params.structured_outputs is required.constraint
    message, reason = message_and_reason(
        plan_tools(_body(), True, "mistral"),
        'Sure.[TOOL_CALLS][{"name": "add", "arguments": {"a": 2}}]',
        "stop",
    )
    assert reason == "tool_calls" and message["content"] == "Sure."
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2}'}
    assert len(message["tool_calls"][0]["id"]) == 9


def test_qwen3_coder_gets_the_requests_tools_for_its_value_types() -> None:
    plan = plan_tools(_body(), True, "qwen3_coder")
    text = "<tool_call>\n<function=add>\n<parameter=a>\n2\n</parameter>\n</function>\n</tool_call>"
    message, reason = message_and_reason(plan, text, "stop")
    assert reason == "tool_calls" and message["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 2}',
    }
    stream = ToolStream(plan)
    deltas = [stream.delta(text[i : i + 5]) for i in range(0, len(text), 5)]
    last, _ = stream.finish("stop")
    arguments = "".join(
        p["function"].get("arguments", "") for d in [*deltas, last] if d for p in d.get("tool_calls", [])
    )
    assert arguments == '{"a": 2}'
