"""POST /v1/completions: text completion for one or many prompts (text or token ids), plain and streaming."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pagedserve.outputs import CompletionOutput, RequestOutput
from pagedserve.server.errors import APIError
from pagedserve.server.generation import (
    Generation,
    guarded_stream,
    new_request_ids,
    respond,
    until_disconnect,
)
from pagedserve.server.logprobs import completion_logprobs, prompt_logprobs_field
from pagedserve.server.openai.protocol import CompletionRequest
from pagedserve.server.request_context import client_request_id, server_state
from pagedserve.server.sampling import check_logprobs, completion_sampling_params
from pagedserve.server.streaming import SSEResponse, continuous_usage, running_usage, sse, usage

router = APIRouter()


def prompt_list(prompt: Any) -> list[str | list[int]]:
    """The four accepted prompt shapes as a list of single prompts."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise APIError(400, "The prompt must not be empty.", param="prompt")
    return prompts


def tokenize_prompts(
    tokenizer: Any, prompts: list[str | list[int]], vocab_size: int, add_special_tokens: bool = True
) -> list[list[int]]:
    """Text prompts to ids (with the tokenizer's BOS etc. unless add_special_tokens is false); ids checked."""
    token_lists = []
    for prompt in prompts:
        ids = (
            tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            if isinstance(prompt, str)
            else prompt
        )
        if not ids:
            raise APIError(400, "The prompt must not be empty.", param="prompt")
        if any(not 0 <= t < vocab_size for t in ids):
            raise APIError(400, f"Prompt token ids must be in [0, {vocab_size}).", param="prompt")
        token_lists.append(ids)
    return token_lists


async def start_prompts(
    request: Request, generation: Generation, prompts: list[str | list[int]], add_special_tokens: bool
) -> None:
    """Tokenize the prompts off the event loop, then submit them (both abandoned if the client goes away)."""
    engine = generation.engine
    generation.prompts = await until_disconnect(
        request,
        generation.state.off_loop(
            tokenize_prompts, engine.tokenizer, prompts, engine.info.vocab_size, add_special_tokens
        ),
    )
    await until_disconnect(request, generation.start())


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_runner("generate", "Completions")
    params = completion_sampling_params(body, state.config.max_n, engine.info.default_sampling_params)
    check_logprobs(params, engine.info.max_logprobs, "logprobs")
    prompts = prompt_list(body.prompt)
    response_id, engine_id = new_request_ids("cmpl", client_request_id(request))
    generation = Generation(
        state,
        engine,
        engine_id,
        prompts,
        params,
        body.cache_salt,
        body.priority or 0,  # type: ignore[arg-type]
        state.lora_request(model),
    )
    generation.admit()

    async def build() -> Any:
        await start_prompts(request, generation, prompts, body.add_special_tokens is not False)
        # A truncated prompt echoes what the model saw: decoded from its (kept) token ids.
        whole = params.truncate_prompt_tokens is None
        echo_texts = [p if isinstance(p, str) and whole else None for p in prompts] if body.echo else None
        as_ids = body.return_tokens_as_token_ids
        if as_ids is None:  # the server's flag is every request's default
            as_ids = state.config.return_tokens_as_token_ids
        view = _View(
            response_id, model, int(time.time()), params.n, echo_texts, body.logprobs, engine.tokenizer,
            bool(body.return_token_ids), as_ids, body.prompt_logprobs, state.config.enable_prompt_tokens_details,
        )  # fmt: skip
        if body.stream:
            # --enable-force-include-usage: the usage chunk whether or not the request asked for it.
            include_usage = state.config.enable_force_include_usage or bool(
                body.stream_options and body.stream_options.include_usage
            )
            return SSEResponse(
                guarded_stream(
                    generation,
                    _stream(
                        generation,
                        view,
                        include_usage,
                        # --enable-force-include-usage: usage on every chunk too (vLLM's newer rule)
                        state.config.enable_force_include_usage or continuous_usage(body.stream_options),
                    ),
                ),
                on_close=generation.close,
            )
        outputs = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(view.response(outputs))

    return await respond(generation, build)


class _View:
    """Builds choices from engine outputs; tracks what each streamed choice has already sent."""

    def __init__(
        self,
        response_id: str,
        model: str,
        created: int,
        n: int,
        echo_texts: list[str | None] | None,
        logprobs: int | None,
        tokenizer: Any,
        return_token_ids: bool = False,
        tokens_as_ids: bool = False,
        prompt_logprobs: int | None = None,
        prompt_details: bool = False,
    ) -> None:
        self.head = {"id": response_id, "object": "text_completion", "created": created, "model": model}
        self.prompt_details = prompt_details  # --enable-prompt-tokens-details
        self.n = n
        self.echo_texts = echo_texts
        self.logprobs = logprobs
        self.tokenizer = tokenizer
        self.prompt_logprobs = prompt_logprobs  # vLLM's prompt_logprobs field: top-k a prompt token
        self.tokens_as_ids = tokens_as_ids  # return_tokens_as_token_ids: logprobs name tokens "token_id:N"
        self.return_token_ids = (
            return_token_ids  # vLLM's: the ids with the text (the prompt's in the first chunk)
        )
        self.sent_chars: dict[int, int] = {}
        self.sent_tokens: dict[int, int] = {}
        self.offsets: dict[int, int] = {}

    def _echo(self, prompt_index: int, output: RequestOutput) -> str:
        assert self.echo_texts is not None
        text = self.echo_texts[prompt_index]
        return text if text is not None else self.tokenizer.decode(output.prompt_token_ids)

    def choice(
        self, prompt_index: int, output: RequestOutput, completion: CompletionOutput
    ) -> dict[str, Any]:
        """The delta of this choice since the last call (all of it on the first call)."""
        index = prompt_index * self.n + completion.index
        first = index not in self.sent_chars
        if first:
            self.sent_chars[index] = self.sent_tokens[index] = self.offsets[index] = 0
        text = completion.text[self.sent_chars[index] :]
        logprobs = None
        if self.logprobs is not None and completion.logprobs is not None:
            start = self.sent_tokens[index]
            entries: list[Any] = list(completion.logprobs[start:])
            token_ids = list(completion.token_ids[start:])
            if first and self.echo_texts is not None and output.prompt_logprobs is not None:
                entries = list(output.prompt_logprobs) + entries
                token_ids = list(output.prompt_token_ids) + token_ids
            logprobs = completion_logprobs(
                entries, token_ids, self.logprobs, self.tokenizer, self.offsets[index], self.tokens_as_ids
            )
            if logprobs["tokens"]:
                self.offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        if first and self.echo_texts is not None:
            text = self._echo(prompt_index, output) + text
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
            "stop_reason": completion.stop_reason,
        }
        if first and self.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_field(
                output.prompt_logprobs, output.prompt_token_ids, self.prompt_logprobs, self.tokenizer
            )
        if self.return_token_ids:
            choice["token_ids"] = list(completion.token_ids[self.sent_tokens[index] :])
            if first:
                choice["prompt_token_ids"] = list(output.prompt_token_ids)
        self.sent_chars[index] = len(completion.text)
        self.sent_tokens[index] = len(completion.token_ids)
        return choice

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = [
            self.choice(i, output, c)
            for i, output in enumerate(outputs)
            for c in sorted(output.outputs, key=lambda c: c.index)
        ]
        return {**self.head, "choices": choices, "usage": usage(outputs, self.prompt_details)}


async def _stream(
    generation: Generation, view: _View, include_usage: bool, per_chunk_usage: bool = False
) -> AsyncIterator[str]:
    finished: set[tuple[int, int]] = set()
    last: dict[int, RequestOutput] = {}
    async for prompt_index, output in generation.stream():
        last[prompt_index] = output
        for completion in output.outputs:
            key = (prompt_index, completion.index)
            if key in finished:
                continue
            choice = view.choice(prompt_index, output, completion)
            if completion.finish_reason is not None:
                finished.add(key)
            elif (
                not choice["text"]
                and not (choice["logprobs"] and choice["logprobs"]["tokens"])
                and not choice.get("token_ids")
                and "prompt_token_ids" not in choice
            ):
                continue
            chunk = {**view.head, "choices": [choice]}
            if per_chunk_usage:  # the choice's tokens sent so far (vLLM's continuous_usage_stats)
                index = choice["index"]
                chunk["usage"] = running_usage(len(output.prompt_token_ids), view.sent_tokens[index])
            yield sse(chunk)
    if include_usage:
        yield sse({**view.head, "choices": [], "usage": usage(list(last.values()), view.prompt_details)})
