"""/v1/responses output: an answer's text as Responses output items (reasoning, message, function calls) and the
streamed event sequence that builds them.

Streaming sends reasoning and message text as it is generated. With tools (tool_choice other than none), whether the
text is an answer or calls is known only at its end, so the answer's items are sent then, each as its added, delta
and done events (a call's arguments in one delta): the event sequence is the same, only coarser.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from pagedserve.outputs import RequestOutput
from pagedserve.server.chat_tools import ToolPlan, message_and_reason
from pagedserve.server.generation import Generation
from pagedserve.server.reasoning import ReasoningStream, split_reasoning
from pagedserve.server.streaming import sse


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex}",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def reasoning_item(text: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"type": "reasoning", "id": f"rs_{uuid.uuid4().hex}", "summary": [], "content": content}


def function_call_item(call: dict[str, Any]) -> dict[str, Any]:
    """A chat tool call ({id, function: {name, arguments}}) as a Responses function_call item."""
    function = call["function"]
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": call["id"],
        "name": function["name"],
        "arguments": function["arguments"],
        "status": "completed",
    }


def answer_items(plan: ToolPlan, text: str, finish_reason: str | None) -> list[dict[str, Any]]:
    """The items of the answer after any reasoning: its text as a message, its calls as function_call items."""
    status = "incomplete" if finish_reason == "length" else "completed"
    if plan.mode == "none":
        return [message_item(text, status)]
    message, _ = message_and_reason(plan, text, finish_reason)
    items = [message_item(message["content"], status)] if message.get("content") else []
    items += [function_call_item(call) for call in message.get("tool_calls", [])]
    return items or [message_item("", status)]


def usage(output: RequestOutput) -> dict[str, Any]:
    input_tokens = len(output.prompt_token_ids)
    output_tokens = len(output.outputs[0].token_ids)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": output.num_cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _status(output: RequestOutput) -> tuple[str, dict[str, str] | None]:
    if output.outputs[0].finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def finished_response(
    head: dict[str, Any], output: RequestOutput, plan: ToolPlan, parser: str | None
) -> dict[str, Any]:
    completion = output.outputs[0]
    reasoning, text = split_reasoning(parser, completion.text) if parser else ("", completion.text)
    items = [reasoning_item(reasoning)] if reasoning else []
    items += answer_items(plan, text, completion.finish_reason)
    status, incomplete = _status(output)
    return {
        **head,
        "status": status,
        "incomplete_details": incomplete,
        "output": items,
        "usage": usage(output),
    }


async def stream_events(
    generation: Generation, head: dict[str, Any], plan: ToolPlan, parser: str | None
) -> AsyncIterator[str]:
    """The Responses event sequence; each event is `event: <type>` plus its JSON, numbered in order."""
    events = _Events()
    yield events.emit("response.created", response=head)
    yield events.emit("response.in_progress", response=head)
    splitter = ReasoningStream(parser) if parser is not None else None
    buffered = plan.mode != "none"  # calls or text: known at the end
    answer = ""
    sent = 0
    last: RequestOutput | None = None
    async for _, output in generation.stream():
        last = output
        completion = output.outputs[0]
        final = completion.finish_reason is not None
        if splitter is not None:
            thought, new_text = splitter.delta(completion.text, final)
        else:
            thought, new_text = "", completion.text[sent:]
            sent = len(completion.text)
        if thought:
            for line in events.text(reasoning_item(""), thought):
                yield line
        answer += new_text
        if new_text and not buffered:
            for line in events.text(message_item("", "in_progress"), new_text):
                yield line
    assert last is not None, "a started generation yields at least its first output"
    finish = last.outputs[0].finish_reason
    if buffered:
        for item in answer_items(plan, answer, finish):
            for line in events.whole(item):
                yield line
    elif not events.items or events.items[-1]["type"] != "message":
        for line in events.whole(message_item("", "completed")):  # an empty answer is still a message
            yield line
    status, incomplete = _status(last)
    if status == "incomplete" and events.items[-1]["type"] == "message":
        events.items[-1]["status"] = "incomplete"
    for line in events.close():
        yield line
    done = {
        **head,
        "status": status,
        "incomplete_details": incomplete,
        "output": events.items,
        "usage": usage(last),
    }
    yield events.emit(
        "response.incomplete" if status == "incomplete" else "response.completed", response=done
    )


class _Events:
    """Numbered events, and the output items opened so far (the last one may still be open)."""

    def __init__(self) -> None:
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.open = False

    def emit(self, kind: str, **fields: Any) -> str:
        self.sequence += 1
        return f"event: {kind}\n" + sse({"type": kind, "sequence_number": self.sequence - 1, **fields})

    def text(self, template: dict[str, Any], delta: str) -> list[str]:
        """Text for an item of the template's type: opened first unless the open item is of that type."""
        lines = []
        if not (self.open and self.items[-1]["type"] == template["type"]):
            lines += self.close()
            lines += self._add(template)
        item, index = self.items[-1], len(self.items) - 1
        item["content"][0]["text"] += delta
        kind = (
            "response.reasoning_text.delta" if item["type"] == "reasoning" else "response.output_text.delta"
        )
        extra = {} if item["type"] == "reasoning" else {"logprobs": []}
        lines.append(
            self.emit(kind, output_index=index, item_id=item["id"], content_index=0, delta=delta, **extra)
        )
        return lines

    def whole(self, item: dict[str, Any]) -> list[str]:
        """A finished item sent at once (the buffered answer with tools)."""
        lines = self.close()
        if item["type"] != "function_call":
            text = item["content"][0]["text"]
            item["content"][0]["text"] = ""
            return lines + self.text(item, text) if text else lines + self._add(item)
        index = len(self.items)
        self.items.append(item)
        lines.append(
            self.emit("response.output_item.added", output_index=index, item={**item, "arguments": ""})
        )
        lines.append(
            self.emit("response.function_call_arguments.delta", output_index=index, item_id=item["id"],
                      delta=item["arguments"])
        )  # fmt: skip
        lines.append(
            self.emit("response.function_call_arguments.done", output_index=index, item_id=item["id"],
                      arguments=item["arguments"])
        )  # fmt: skip
        lines.append(self.emit("response.output_item.done", output_index=index, item=item))
        return lines

    def _add(self, item: dict[str, Any]) -> list[str]:
        index = len(self.items)
        self.items.append(item)
        self.open = True
        part = item["content"][0]
        return [
            self.emit("response.output_item.added", output_index=index, item={**item, "content": []}),
            self.emit("response.content_part.added", output_index=index, item_id=item["id"], content_index=0,
                      part={**part, "text": ""}),
        ]  # fmt: skip

    def close(self) -> list[str]:
        """The done events of the open item, if any."""
        if not self.open:
            return []
        self.open = False
        index = len(self.items) - 1
        item = self.items[index]
        part = item["content"][0]
        if item["type"] == "message" and item["status"] == "in_progress":
            item["status"] = "completed"
        done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
        return [
            self.emit(done, output_index=index, item_id=item["id"], content_index=0, text=part["text"]),
            self.emit("response.content_part.done", output_index=index, item_id=item["id"], content_index=0,
                      part=part),
            self.emit("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip
