"""OpenAI's Responses API (/v1/responses) on a real server through the openai SDK: the same greedy answer as chat,
instructions as the system message, the streamed event sequence, JSON schema output, length as "incomplete", and
what is not implemented refused by name."""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from .conftest import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]
MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def chat_answer(sdk: OpenAI, messages: list[dict], max_tokens: int) -> str:
    reply = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def test_a_response_is_the_chat_answer(sdk: OpenAI) -> None:
    response = sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    assert response.object == "response" and response.id.startswith("resp")
    assert response.status in ("completed", "incomplete")
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.output_text == chat_answer(sdk, [{"role": "user", "content": QUESTION}], 24)
    assert (
        response.usage is not None and response.usage.output_tokens <= 24 and response.usage.input_tokens > 0
    )
    # instructions are the system message; message items are the conversation.
    steered = sdk.responses.create(
        model=MODEL, instructions="Answer in one word.", max_output_tokens=8, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}],
    )  # fmt: skip
    expected = chat_answer(
        sdk, [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}], 8
    )
    assert steered.output_text == expected


def test_streamed_events_add_up_to_the_response(sdk: OpenAI) -> None:
    plain = sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=20, temperature=0)
    events = list(
        sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=20, temperature=0, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):  # fmt: skip
        assert kinds.count(kind) == 1, kind
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text
    assert events[-1].response.output_text == text
    assert events[-1].response.usage.output_tokens == plain.usage.output_tokens  # type: ignore[union-attr]


def test_json_schema_output_and_length_as_incomplete(sdk: OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    response = sdk.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert set(json.loads(response.output_text)) == {"city"}
    cut = sdk.responses.create(model=MODEL, input=QUESTION, max_output_tokens=2, temperature=0)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [{"type": "function", "name": "f"}], "tool_choice": "auto"},
            "tool_choice",
        ),  # no auto parser
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ],
)
def test_what_is_not_implemented_is_refused_by_name(server: ServerProcess, extra: dict, param: str) -> None:
    import httpx

    body = {"model": MODEL, "input": QUESTION, **extra}
    response = httpx.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
    with pytest.raises(openai.BadRequestError):
        OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0).responses.create(**body)


WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
                   "additionalProperties": False},
}  # fmt: skip


def test_function_calls_and_their_outputs_round_trip(sdk: OpenAI) -> None:
    ask = "What is the weather in Paris?"
    response = sdk.responses.create(
        model=MODEL,
        input=ask,
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=60,
        temperature=0,  # type: ignore[list-item]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(call.name == "get_weather" for call in calls)
    assert isinstance(json.loads(calls[0].arguments)["city"], str) and calls[0].call_id
    named = sdk.responses.create(
        model=MODEL, input=ask, tools=[WEATHER], max_output_tokens=120, temperature=0,  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    [call] = named.output
    assert call.type == "function_call" and set(json.loads(call.arguments)) == {"city"}  # type: ignore[union-attr]
    streamed = list(
        sdk.responses.create(
            model=MODEL, input=ask, tools=[WEATHER], max_output_tokens=120, temperature=0, stream=True,  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
        )
    )  # fmt: skip
    arguments = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert arguments == call.arguments  # type: ignore[union-attr]
    # The call and its output sent back: the model answers from the tool's result (tool_choice none).
    follow = sdk.responses.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", max_output_tokens=30, temperature=0,  # type: ignore[list-item]
        input=[
            {"role": "user", "content": ask},
            {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},  # type: ignore[union-attr]
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny", "celsius": 21}'},  # type: ignore[union-attr]
        ],
    )  # fmt: skip
    assert [item.type for item in follow.output] == ["message"] and follow.output_text
