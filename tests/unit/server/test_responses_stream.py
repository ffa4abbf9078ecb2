"""The /v1/responses event sequence from a generation's outputs (a stand-in generation yields real RequestOutputs;
the HTTP path and the SDK run in tests/e2e/test_e2e_responses.py): item and part events in order, reasoning as
its own output item with --reasoning-parser, numbered events, and the final response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pagedserve.outputs import CompletionOutput, RequestOutput
from pagedserve.server.chat_tools import ToolPlan
from pagedserve.server.responses_output import stream_events


class StandIn:
    """Only what _stream reads of a Generation: stream() of cumulative outputs."""

    def __init__(self, text: str, step: int, finish: str = "stop") -> None:
        self.text, self.step, self.finish = text, step, finish

    async def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        ends = list(range(self.step, len(self.text), self.step)) + [len(self.text)]
        for n, end in enumerate(ends):
            last = end == len(self.text)
            completion = CompletionOutput(
                0, self.text[:end], list(range(n + 1)), finish_reason=self.finish if last else None
            )
            yield 0, RequestOutput("r", None, [1, 2, 3], [completion], last)


def events_of(text: str, step: int, parser: str | None, finish: str = "stop") -> list[dict[str, Any]]:
    head = {"id": "resp-1", "object": "response", "status": "in_progress", "output": []}

    async def run() -> list[str]:
        events = stream_events(StandIn(text, step, finish), head, ToolPlan("none"), parser)  # type: ignore[arg-type]
        return [chunk async for chunk in events]

    events = []
    for chunk in asyncio.run(run()):
        kind_line, data_line = chunk.strip().split("\n")
        event = json.loads(data_line[len("data: ") :])
        assert kind_line == f"event: {event['type']}"
        events.append(event)
    return events


@pytest.mark.parametrize("step", [1, 3, 100])
def test_reasoning_then_message_items(step: int) -> None:
    events = events_of("<think>two and two</think>It is four.", step, "qwen3")
    kinds = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message"]
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    answer = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert (thought, answer) == ("two and two", "It is four.")
    # The reasoning item closes before the message item opens.
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    final = events[-1]["response"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == final["output"]  # each item as sent is the item in the final response
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert (
        final["output"][1]["content"][0]["text"] == "It is four."
        and final["output"][1]["status"] == "completed"
    )
    assert final["usage"]["input_tokens"] == 3


def test_plain_text_and_a_cut_answer() -> None:
    events = events_of("Paris is the capital.", 4, None, finish="length")
    assert [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"] == ["message"]
    assert (
        "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        == "Paris is the capital."
    )
    final = events[-1]
    assert final["type"] == "response.incomplete" and final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"
    [done] = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done["status"] == "incomplete"


def test_with_tools_the_answer_is_sent_at_its_end_as_calls() -> None:
    from pagedserve.server.chat_tools import ToolPlan as Plan

    plan = Plan(
        "named", [{"type": "function", "function": {"name": "get_weather"}}], function_name="get_weather"
    )
    head = {"id": "resp-1", "object": "response", "status": "in_progress", "output": []}

    async def run() -> list[str]:
        events = stream_events(StandIn('{"city": "Paris"}', 3), head, plan, None)  # type: ignore[arg-type]
        return [chunk async for chunk in events]

    events = [json.loads(chunk.strip().split("\n")[1][len("data: ") :]) for chunk in asyncio.run(run())]
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" not in kinds
    assert kinds[2:] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    [call] = events[-1]["response"]["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["call_id"]
