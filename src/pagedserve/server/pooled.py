"""The flow the pooling routes share (/v1/embeddings, /classify): one engine request a prompt, each a single pooled
step, answered as one JSON body once all are done."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pagedserve.engine.pooling_requests import pooling_request
from pagedserve.outputs import RequestOutput
from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams
from pagedserve.server.completions import prompt_list, start_prompts
from pagedserve.server.errors import APIError
from pagedserve.server.generation import Generation, new_request_ids, respond, until_disconnect
from pagedserve.server.request_context import client_request_id, server_state

# (response id, model name, one output a prompt) -> the response body
Render = Callable[[str, str, list[RequestOutput]], dict[str, Any]]


def list_body(response_id: str, model: str, data: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """The `{"object": "list", "data": [...], "usage": ...}` body of /v1/embeddings, /score and /classify."""
    return {
        "id": response_id,
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
    }


def pooled_params(pooling: PoolingParams, truncate_prompt_tokens: int | None) -> SamplingParams:
    """The request's parameters; a bad value is a 400 naming its field."""
    try:
        return pooling_request(pooling, truncate_prompt_tokens)
    except ValueError as error:
        raise APIError(400, str(error), param=getattr(error, "param", None)) from None


def use_activation(body: Any) -> bool:
    """vLLM's use_activation, or its older spellings activation and softmax; default on."""
    for value in (body.use_activation, body.activation, body.softmax):
        if value is not None:
            return value
    return True


async def serve_pooled(
    request: Request, body: Any, engine: Any, model: str, params: SamplingParams, prefix: str, render: Render
) -> Response:
    """Runs every prompt of `body.input` (texts or token ids) with `params` and answers `render`'s body."""
    state = server_state(request)
    prompts = prompt_list(body.input)
    response_id, engine_id = new_request_ids(prefix, client_request_id(request))
    generation = Generation(
        state, engine, engine_id, prompts, params, None, body.priority or 0, state.lora_request(model)
    )
    generation.admit()

    async def build() -> Response:
        await start_prompts(request, generation, prompts, body.add_special_tokens is not False)
        outputs = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(render(response_id, model, outputs))

    return await respond(generation, build)
