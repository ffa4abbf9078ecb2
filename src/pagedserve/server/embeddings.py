"""POST /v1/embeddings: OpenAI's embeddings API on a model served with --runner pooling (vLLM's route)."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pagedserve.outputs import RequestOutput
from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams
from pagedserve.server.completions import prompt_list, start_prompts
from pagedserve.server.errors import APIError
from pagedserve.server.generation import Generation, new_request_ids, respond, until_disconnect
from pagedserve.server.openai.protocol import EmbeddingRequest
from pagedserve.server.request_context import client_request_id, server_state

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def create_embedding(body: EmbeddingRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_pooling_task(("embed",), "Embeddings")
    if body.dimensions is not None:  # vLLM's refusal for models without matryoshka training
        raise APIError(
            400,
            "Model does not support matryoshka representation, changing output dimensions will lead to poor "
            "results.",
            param="dimensions",
        )
    try:
        params = SamplingParams(
            max_tokens=1, temperature=0.0, detokenize=False, truncate_prompt_tokens=body.truncate_prompt_tokens,
            ignore_eos=True,  # ends on length, whatever the runner's placeholder token is
            pooling=PoolingParams(normalize=body.normalize is not False),
        )  # fmt: skip
    except ValueError as error:
        raise APIError(400, str(error), param=getattr(error, "param", None)) from None
    prompts = prompt_list(body.input)
    response_id, engine_id = new_request_ids("embd", client_request_id(request))
    generation = Generation(
        state, engine, engine_id, prompts, params, None, body.priority or 0, state.lora_request(model)
    )
    generation.admit()

    async def build() -> Any:
        await start_prompts(request, generation, prompts, body.add_special_tokens is not False)
        outputs = await until_disconnect(request, generation.collect())
        await generation.close()
        return JSONResponse(_response(response_id, model, outputs, body.encoding_format))

    return await respond(generation, build)


def _response(response_id: str, model: str, outputs: list[RequestOutput], encoding: str) -> dict[str, Any]:
    data = []
    for index, output in enumerate(outputs):
        vector = output.outputs[0].embedding or []
        embedding: Any = vector if encoding == "float" else _base64(vector)
        data.append({"index": index, "object": "embedding", "embedding": embedding})
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return {
        "id": response_id,
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0},
    }


def _base64(vector: list[float]) -> str:
    """OpenAI's encoding_format "base64": the float32 values, little-endian, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
