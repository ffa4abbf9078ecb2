"""POST /v1/embeddings: OpenAI's embeddings API on a model served with --runner pooling (vLLM's route)."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Request

from pagedserve.outputs import RequestOutput
from pagedserve.pooling_params import PoolingParams
from pagedserve.server.errors import APIError
from pagedserve.server.openai.protocol import EmbeddingRequest
from pagedserve.server.pooled import list_body, pooled_params, serve_pooled
from pagedserve.server.request_context import server_state

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
    params = pooled_params(PoolingParams(normalize=body.normalize is not False), body.truncate_prompt_tokens)

    def render(response_id: str, model: str, outputs: list[RequestOutput]) -> dict[str, Any]:
        return _response(response_id, model, outputs, body.encoding_format)

    return await serve_pooled(request, body, engine, model, params, "embd", render)


def _response(response_id: str, model: str, outputs: list[RequestOutput], encoding: str) -> dict[str, Any]:
    data = []
    for index, output in enumerate(outputs):
        vector = output.outputs[0].embedding or []
        embedding: Any = vector if encoding == "float" else _base64(vector)
        data.append({"index": index, "object": "embedding", "embedding": embedding})
    return list_body(response_id, model, data, sum(len(o.prompt_token_ids) for o in outputs))


def _base64(vector: list[float]) -> str:
    """OpenAI's encoding_format "base64": the float32 values, little-endian, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
