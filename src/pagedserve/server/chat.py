"""POST /v1/chat/completions: OpenAI chat, plain and streaming (SSE)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pagedserve.outputs import CompletionOutput, RequestOutput
from pagedserve.server.chat_messages import chat_options, plain_messages, render_chat
from pagedserve.server.chat_tools import ToolPlan, ToolStream, apply_plan, message_and_reason, plan_tools
from pagedserve.server.generation import (
    Generation,
    guarded_stream,
    new_request_ids,
    respond,
    until_disconnect,
)
from pagedserve.server.logprobs import chat_logprobs, prompt_logprobs_field
from pagedserve.server.openai.protocol import ChatCompletionRequest
from pagedserve.server.reasoning import ReasoningStream, split_reasoning
from pagedserve.server.request_context import client_request_id, server_state
from pagedserve.server.sampling import chat_sampling_params, check_logprobs
from pagedserve.server.streaming import SSEResponse, continuous_usage, running_usage, sse, usage
from pagedserve.server_config import ServerConfig

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_runner("generate", "Chat Completions")
    params = chat_sampling_params(body, state.config.max_n, engine.info.default_sampling_params)
    check_logprobs(params, engine.info.max_logprobs, "top_logprobs")
    if state.config.return_tokens_as_token_ids:  # the server's flag: every request's default
        body.return_tokens_as_token_ids = body.return_tokens_as_token_ids is not False
    plan = plan_tools(body, state.config.enable_auto_tool_choice, state.config.tool_call_parser)
    apply_plan(plan, params)
    config = state.config
    messages = plain_messages(body.messages)
    response_id, engine_id = new_request_ids("chatcmpl", client_request_id(request))
    # The prompt is filled in once rendered.
    generation = Generation(
        state, engine, engine_id, [[]], params, body.cache_salt, body.priority or 0, state.lora_request(model)
    )
    generation.admit()

    async def build() -> Any:
        prompt = await until_disconnect(
            request,
            state.off_loop(
                render_chat,
                engine,
                messages,
                chat_options(
                    body, config.chat_template_content_format, plan.tools, bool(body.add_special_tokens)
                ),
            ),
        )
        generation.prompts = [prompt]
        await until_disconnect(request, generation.start())
        if body.stream:
            # --enable-force-include-usage: the usage chunk whether or not the request asked for it.
            include_usage = config.enable_force_include_usage or bool(
                body.stream_options and body.stream_options.include_usage
            )
            stream = _stream(
                generation, response_id, model, int(time.time()), include_usage, body, engine, plan, config
            )  # fmt: skip
            return SSEResponse(guarded_stream(generation, stream), on_close=generation.close)
        outputs = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(_response(outputs[0], response_id, model, body, engine, plan, config))

    return await respond(generation, build)


def _choice_logprobs(
    completion: CompletionOutput, start: int, body: ChatCompletionRequest, engine: Any
) -> Any:
    if not body.logprobs or completion.logprobs is None:
        return None
    return chat_logprobs(
        completion.logprobs[start:],
        completion.token_ids[start:],
        body.top_logprobs or 0,
        engine.tokenizer,
        bool(body.return_tokens_as_token_ids),
    )


def _response(
    output: RequestOutput,
    response_id: str,
    model: str,
    body: ChatCompletionRequest,
    engine: Any,
    plan: ToolPlan,
    config: ServerConfig,
) -> dict[str, Any]:
    reasoning_parser = config.reasoning_parser
    choices = []
    for c in sorted(output.outputs, key=lambda c: c.index):
        reasoning, text = split_reasoning(reasoning_parser, c.text) if reasoning_parser else ("", c.text)
        message: dict[str, Any] = {"role": config.response_role, "content": text}
        finish_reason = c.finish_reason
        if plan.mode != "none":  # tool calls are read from the answer, after any reasoning
            message, finish_reason = message_and_reason(plan, text, c.finish_reason)
            message["role"] = config.response_role
        if reasoning_parser:
            message["content"] = message.get("content") or None
            message["reasoning"] = (reasoning or None) if body.include_reasoning is not False else None
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": _choice_logprobs(c, 0, body, engine),
                "finish_reason": finish_reason,
                "stop_reason": c.stop_reason,
            }
        )
        if body.return_token_ids:
            choices[-1]["token_ids"] = list(c.token_ids)
    response = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage([output], config.enable_prompt_tokens_details),
    }
    if body.return_token_ids:
        response["prompt_token_ids"] = list(output.prompt_token_ids)
    if body.prompt_logprobs is not None:
        response["prompt_logprobs"] = prompt_logprobs_field(
            output.prompt_logprobs, output.prompt_token_ids, body.prompt_logprobs, engine.tokenizer
        )
    return response


async def _stream(
    generation: Generation,
    response_id: str,
    model: str,
    created: int,
    include_usage: bool,
    body: ChatCompletionRequest,
    engine: Any,
    plan: ToolPlan,
    config: ServerConfig,
) -> AsyncIterator[str]:
    reasoning_parser = config.reasoning_parser
    head = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model}
    tool_streams: dict[int, ToolStream] = {}
    # return_token_ids (vLLM's): each chunk carries the ids it adds; the prompt's come with the first chunk.
    want_ids = bool(body.return_token_ids)
    sent_ids: dict[int, int] = {}
    current: CompletionOutput | None = None
    prompt_ids_sent = False
    reasoning_streams: dict[int, ReasoningStream] = {}
    show_reasoning = body.include_reasoning is not False
    # --enable-force-include-usage: usage on every chunk too (vLLM's newer rule).
    per_chunk_usage = config.enable_force_include_usage or continuous_usage(body.stream_options)

    def chunk(
        index: int,
        delta: dict[str, Any],
        logprobs: Any = None,
        finish: CompletionOutput | None = None,
        finish_reason: str | None = None,
        token_ids: bool = True,
    ) -> str:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": (finish_reason or finish.finish_reason) if finish else None,
        }
        if finish is not None:
            choice["stop_reason"] = finish.stop_reason
        nonlocal prompt_ids_sent
        extra: dict[str, Any] = {}
        if want_ids:
            assert current is not None, "set before each choice's chunks"
            if token_ids:  # not on the role chunk: ids come with the text they make
                choice["token_ids"] = list(current.token_ids[sent_ids.get(index, 0) :])
                sent_ids[index] = len(current.token_ids)
            if not prompt_ids_sent:
                prompt_ids_sent = True
                extra["prompt_token_ids"] = list(prompt_token_ids)
        if per_chunk_usage:  # the choice's tokens sent so far (vLLM's continuous_usage_stats)
            extra["usage"] = running_usage(len(prompt_token_ids), sent_tokens.get(index, 0))
        return sse({**head, **extra, "choices": [choice]})

    sent_chars: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    done: set[int] = set()
    last: RequestOutput | None = None
    prompt_token_ids: list[int] = []
    async for _, output in generation.stream():
        last = output
        prompt_token_ids = output.prompt_token_ids
        for completion in output.outputs:
            index = completion.index
            if index in done:
                continue
            current = completion
            new_ids = want_ids and len(completion.token_ids) > sent_ids.get(index, 0)
            if index not in sent_chars:
                sent_chars[index] = sent_tokens[index] = 0
                yield chunk(index, {"role": config.response_role, "content": ""}, token_ids=False)
            delta_text = completion.text[sent_chars[index] :]
            thought = ""  # new reasoning text (--reasoning-parser)
            if reasoning_parser:
                splitter = reasoning_streams.setdefault(index, ReasoningStream(reasoning_parser))
                thought, delta_text = splitter.delta(completion.text, completion.finish_reason is not None)
                thought = thought if show_reasoning else ""
            reasoning = {"reasoning": thought} if thought else {}
            logprobs = _choice_logprobs(completion, sent_tokens[index], body, engine)
            sent_chars[index], sent_tokens[index] = len(completion.text), len(completion.token_ids)
            if plan.mode != "none":
                tools = tool_streams.setdefault(index, ToolStream(plan))
                delta = tools.delta(delta_text)
                if completion.finish_reason is not None:
                    done.add(index)
                    last_delta, reason = tools.finish(completion.finish_reason)
                    merged = _merge(delta, last_delta)
                    yield chunk(index, {**reasoning, **merged}, logprobs, completion, reason)
                elif delta is not None or reasoning or (logprobs and logprobs["content"]) or new_ids:
                    yield chunk(index, {**reasoning, **(delta or {})}, logprobs)
            elif completion.finish_reason is not None:
                done.add(index)
                content = {"content": delta_text} if delta_text else {}
                yield chunk(index, {**reasoning, **content}, logprobs, completion)
            elif delta_text or reasoning or (logprobs and logprobs["content"]) or new_ids:
                content = {"content": delta_text} if delta_text or not reasoning else {}
                yield chunk(index, {**reasoning, **content}, logprobs)
    if include_usage and last is not None:
        yield sse({**head, "choices": [], "usage": usage([last], config.enable_prompt_tokens_details)})


def _merge(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any]:
    """One chunk delta from two: content joined, tool-call pieces in order."""
    merged: dict[str, Any] = {}
    for part in (first, second):
        if not part:
            continue
        if part.get("content"):
            merged["content"] = merged.get("content", "") + part["content"]
        if part.get("tool_calls"):
            merged["tool_calls"] = merged.get("tool_calls", []) + part["tool_calls"]
    return merged
