"""POST /v1/responses: OpenAI's Responses API (what `client.responses.create` and agent SDKs send), as vLLM serves
it without its response store.

Input: a string, or message items (`role` + text content), and an earlier answer's function_call /
function_call_output items; `instructions` become the system message. Sampling: `temperature`, `top_p`,
`max_output_tokens`; `text.format` json_object / json_schema constrain the output as on chat; function `tools` with
`tool_choice` work as chat's (the same plan: grammars for required / named, --tool-call-parser for auto). Output
items and events: server/responses_output.py. Refused by name: previous_response_id, conversation and background
(no store here), non-text inputs, reasoning effort.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pagedserve.engine.chat import ChatOptions
from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams
from pagedserve.server.chat_messages import render_chat
from pagedserve.server.chat_tools import ToolPlan, apply_plan, plan_tool_calls
from pagedserve.server.errors import APIError, invalid_request
from pagedserve.server.generation import (
    Generation,
    guarded_stream,
    new_request_ids,
    respond,
    until_disconnect,
)
from pagedserve.server.openai.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    ResponsesNamedTool,
    ResponsesRequest,
)
from pagedserve.server.request_context import client_request_id, server_state
from pagedserve.server.responses_output import finished_response, stream_events
from pagedserve.server.sampling import MAX_TEMPERATURE
from pagedserve.server.streaming import SSEResponse
from pagedserve.server.unsupported import refuse_unsupported_fields

router = APIRouter()


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The input as chat messages: function_call items become an assistant message's tool calls (consecutive ones
    together: parallel calls), function_call_output items tool messages."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    if not body.input:
        raise APIError(400, "input must not be empty.", param="input")
    for item in body.input:
        if isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant" and "tool_calls" in previous:
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "content": item.output, "tool_call_id": item.call_id})
        else:
            content = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            messages.append({"role": item.role, "content": content})
    return messages


def _tool_plan(body: ResponsesRequest, state: Any, constrained: bool) -> ToolPlan:
    """Chat's tool plan for the Responses spelling of tools (flat function tools, a named choice by name)."""
    choice: Any = body.tool_choice
    named = choice.name if isinstance(choice, ResponsesNamedTool) else None
    tools = [
        {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
        for t in body.tools or []
    ]
    return plan_tool_calls(
        tools, "named" if named is not None else choice, named, body.parallel_tool_calls,
        "text.format" if constrained else None, state.config.enable_auto_tool_choice, state.config.tool_call_parser,
    )  # fmt: skip


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
    engine = state.require_runner("generate", "Responses")
    refuse_unsupported_fields(body, "responses")
    params = _sampling_params(body, engine.info.default_sampling_params)
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise APIError(400, "text.verbosity is not implemented.", param="text.verbosity")
    plan = _tool_plan(body, state, params.structured_outputs is not None)
    apply_plan(plan, params)
    messages = _messages(body)
    reasoning_parser = state.config.reasoning_parser
    response_id, engine_id = new_request_ids("resp", client_request_id(request))
    generation = Generation(state, engine, engine_id, [[]], params, lora_request=state.lora_request(model))
    generation.admit()
    head = _head(response_id, model, body, params)

    async def build() -> Any:
        prompt = await until_disconnect(
            request,
            state.off_loop(
                render_chat,
                engine,
                messages,
                ChatOptions(tools=plan.tools, content_format=state.config.chat_template_content_format),
            ),
        )
        generation.prompts = [prompt]
        await until_disconnect(request, generation.start())
        if body.stream:
            events = stream_events(generation, head, plan, reasoning_parser)
            return SSEResponse(guarded_stream(generation, events), on_close=generation.close)
        [output] = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(finished_response(head, output, plan, reasoning_parser))

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
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
        "tool_choice": body.tool_choice.model_dump()
        if isinstance(body.tool_choice, BaseModel)
        else body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "store": False,
        "metadata": body.metadata or {},
        "user": body.user,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }
