"""Tool calling through the official `openai` SDK against a real server with the bundled model: "required" and
named choices produce calls whose arguments validate (a grammar forces them even from a 135M model), "none"
gives text, streamed tool-call deltas reassemble to the plain answer, and a tool result round trip works."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK: list[Any] = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


def _check_calls(calls: Any) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_produces_valid_calls(sdk: OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300, temperature=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None
    _check_calls(choice.message.tool_calls)


def test_named_choice_calls_that_function(sdk: OpenAI) -> None:
    named: Any = {"type": "function", "function": {"name": "get_time"}}
    response = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=200, temperature=0.8, seed=1
    )
    calls = response.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]
    _check_calls(calls)


def test_none_gives_content(sdk: OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=20, temperature=0
    )
    message = response.choices[0].message
    assert message.content and not message.tool_calls


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_streamed_tool_call_deltas_reassemble(sdk: OpenAI, tool_choice: Any) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": tool_choice,
                              "max_tokens": 300, "temperature": 0}  # fmt: skip
    plain = sdk.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in sdk.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"name": "", "arguments": "", "id": ""})
            call["id"] = piece.id or call["id"]
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert plain.message.tool_calls is not None
    expected = [(c.function.name, json.loads(c.function.arguments)) for c in plain.message.tool_calls]
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == expected
    assert all(c["id"].startswith("chatcmpl-tool-") for c in calls.values())
    assert finish == plain.finish_reason


def test_tool_result_round_trip(sdk: OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny", "high": 21})},
    ]
    answer = sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                         max_tokens=30, temperature=0)  # fmt: skip
    assert answer.choices[0].message.content and answer.usage is not None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({"tool_choice": "auto"}, "--enable-auto-tool-choice"),
        ({}, "--enable-auto-tool-choice"),  # tools without tool_choice mean "auto", as OpenAI
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_tool_choice_errors_are_400_naming_tool_choice(
    server: ServerProcess, extra: dict, fragment: str
) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 5, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]["param"] == "tool_choice" and fragment in response.json()["error"]["message"]
    )
    no_tools = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "tools": None, "tool_choice": "required"}
    )
    assert no_tools.status_code == 400 and no_tools.json()["error"]["param"] == "tool_choice"
