"""POST /v1/responses: OpenAI's Responses API for text (what `client.responses.create` and agent SDKs send), as
vLLM serves it without its response store.

Input: a string, or message items (`role` + text content); `instructions` become the system message. Sampling:
`temperature`, `top_p`, `max_output_tokens`; `text.format` json_object / json_schema constrain the output as on
chat. The answer is one `message` output item (after a `reasoning` item with --reasoning-parser). Streaming sends
the Responses event sequence (response.created ... response.output_text.delta ... response.completed).
Refused by name: tools, previous_response_id and background (no store here), non-text inputs, reasoning effort.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams
from pagedserve.server.chat_messages import render_chat
from pagedserve.server.errors import APIError, invalid_request
from pagedserve.server.generation import (
    Generation,
    guarded_stream,
    new_request_ids,
    respond,
    until_disconnect,
)
from pagedserve.server.openai.protocol import ResponsesRequest
from pagedserve.server.reasoning import ReasoningStream, split_reasoning
from pagedserve.server.request_context import client_request_id, server_state
from pagedserve.server.sampling import MAX_TEMPERATURE
from pagedserve.server.streaming import SSEResponse, sse
from pagedserve.server.unsupported import refuse_unsupported_fields

router = APIRouter()


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    if not body.input:
        raise APIError(400, "input must not be empty.", param="input")
    for item in body.input:
        content = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
        messages.append({"role": item.role, "content": content})
    return messages


def _sampling_params(body: ResponsesRequest, defaults: dict[str, Any]) -> SamplingParams:
    values: dict[str, Any] = {k: v for k, v in defaults.items() if k != "max_tokens"}
    for name in ("temperature", "top_p"):
        if getattr(body, name) is not None:
            values[name] = getattr(body, name)
    if isinstance(values.get("temperature"), float) and values["temperature"] > MAX_TEMPERATURE:
        raise APIError(400, f"temperature must be in [0, {MAX_TEMPERATURE}].", param="temperature")
    cap = defaults.get("max_tokens")
    asked = body.max_output_tokens
    values["max_tokens"] = cap if asked is None else (asked if cap is None else min(asked, cap))
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        values["structured_outputs"] = StructuredOutputsParams(json_object=True)
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise APIError(400, "text.format json_schema needs a schema.", param="text.format.schema")
        values["structured_outputs"] = StructuredOutputsParams(json=fmt.schema_)
    try:
        return SamplingParams(**values)
    except ValueError as error:
        raise invalid_request(error) from None


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_engine()
    refuse_unsupported_fields(body, "responses")
    params = _sampling_params(body, engine.info.default_sampling_params)
    messages = _messages(body)
    reasoning_parser = state.config.reasoning_parser
    response_id, engine_id = new_request_ids("resp", client_request_id(request))
    generation = Generation(state, engine, engine_id, [[]], params)
    generation.admit()
    head = _head(response_id, model, body, params)

    async def build() -> Any:
        prompt = await until_disconnect(request, state.off_loop(render_chat, engine, messages, True))
        generation.prompts = [prompt]
        await until_disconnect(request, generation.start())
        if body.stream:
            events = _stream(generation, head, reasoning_parser)
            return SSEResponse(guarded_stream(generation, events), on_close=generation.close)
        [output] = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(_finished(head, output, reasoning_parser))

    return await respond(generation, build)


def _head(response_id: str, model: str, body: ResponsesRequest, params: SamplingParams) -> dict[str, Any]:
    """The response object's fields that do not depend on the output."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "in_progress",
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "store": False,
        "metadata": body.metadata or {},
        "user": body.user,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _usage(output: RequestOutput, reasoning_tokens: int = 0) -> dict[str, Any]:
    input_tokens = len(output.prompt_token_ids)
    output_tokens = len(output.outputs[0].token_ids)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _final_status(output: RequestOutput) -> tuple[str, dict[str, str] | None]:
    if output.outputs[0].finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def _finished(head: dict[str, Any], output: RequestOutput, parser: str | None) -> dict[str, Any]:
    text = output.outputs[0].text
    items = []
    if parser is not None:
        reasoning, text = split_reasoning(parser, text)
        if reasoning:
            items.append(_reasoning_item(f"rs_{uuid.uuid4().hex}", reasoning))
    status, incomplete = _final_status(output)
    items.append(_message_item(f"msg_{uuid.uuid4().hex}", text, status))
    return {
        **head,
        "status": status,
        "incomplete_details": incomplete,
        "output": items,
        "usage": _usage(output),
    }


async def _stream(generation: Generation, head: dict[str, Any], parser: str | None) -> AsyncIterator[str]:
    """The Responses event sequence; each event is `event: <type>` plus its JSON, numbered in order."""
    sequence = 0

    def event(kind: str, **fields: Any) -> str:
        nonlocal sequence
        sequence += 1
        return f"event: {kind}\n" + sse({"type": kind, "sequence_number": sequence - 1, **fields})

    yield event("response.created", response=head)
    yield event("response.in_progress", response=head)
    splitter = ReasoningStream(parser) if parser is not None else None
    items: list[dict[str, Any]] = []  # output items opened so far; the open one is the last
    texts: list[str] = []
    last: RequestOutput | None = None

    def open_item(item: dict[str, Any]) -> list[str]:
        items.append(item)
        texts.append("")
        index = len(items) - 1
        part = item["content"][0]
        added = [event("response.output_item.added", output_index=index, item={**item, "content": []})]
        added.append(
            event("response.content_part.added", output_index=index, item_id=item["id"], content_index=0,
                  part={**part, "text": ""})
        )  # fmt: skip
        return added

    def close_item() -> list[str]:
        index = len(items) - 1
        item, text = items[index], texts[index]
        done_kind = (
            "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
        )
        part = {**item["content"][0], "text": text}
        item["content"] = [part]
        if item["type"] == "message":
            item["status"] = "completed"
        return [
            event(done_kind, output_index=index, item_id=item["id"], content_index=0, text=text),
            event(
                "response.content_part.done",
                output_index=index,
                item_id=item["id"],
                content_index=0,
                part=part,
            ),
            event("response.output_item.done", output_index=index, item=item),
        ]

    sent = 0
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
            if not items:
                for line in open_item(_reasoning_item(f"rs_{uuid.uuid4().hex}", "")):
                    yield line
            texts[-1] += thought
            yield event("response.reasoning_text.delta", output_index=len(items) - 1, item_id=items[-1]["id"],
                        content_index=0, delta=thought)  # fmt: skip
        if new_text or (final and (not items or items[-1]["type"] != "message")):
            if not items or items[-1]["type"] != "message":
                if items:
                    for line in close_item():
                        yield line
                for line in open_item(_message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress")):
                    yield line
            if new_text:
                texts[-1] += new_text
                yield event("response.output_text.delta", output_index=len(items) - 1, item_id=items[-1]["id"],
                            content_index=0, delta=new_text, logprobs=[])  # fmt: skip
    assert last is not None, "a started generation yields at least its first output"
    for line in close_item():
        yield line
    status, incomplete = _final_status(last)
    if status == "incomplete":
        items[-1]["status"] = "incomplete"
    done = {
        **head,
        "status": status,
        "incomplete_details": incomplete,
        "output": items,
        "usage": _usage(last),
    }
    yield event("response.incomplete" if status == "incomplete" else "response.completed", response=done)
