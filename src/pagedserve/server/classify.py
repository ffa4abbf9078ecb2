"""vLLM's POST /classify (/v1/classify): each input's probabilities over a sequence classifier's labels (softmax;
a sigmoid for a one-label model), the most likely label named as config.json's id2label names it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pagedserve.outputs import RequestOutput
from pagedserve.pooling_params import PoolingParams
from pagedserve.server.openai.protocol import ClassificationRequest
from pagedserve.server.pooled import list_body, pooled_params, serve_pooled, use_activation
from pagedserve.server.request_context import server_state

router = APIRouter()


@router.post("/classify", response_model=None)
@router.post("/v1/classify", response_model=None)
async def create_classification(body: ClassificationRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_pooling_task(("score", "classify"), "Classification")
    pooling = PoolingParams(normalize=False, use_activation=use_activation(body))
    params = pooled_params(pooling, body.truncate_prompt_tokens)
    labels = engine.info.labels

    def render(response_id: str, model: str, outputs: list[RequestOutput]) -> dict[str, Any]:
        data = []
        for index, output in enumerate(outputs):
            probs = output.outputs[0].embedding or []
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": index, "label": labels[best], "probs": probs, "num_classes": len(probs)})
        return list_body(response_id, model, data, sum(len(o.prompt_token_ids) for o in outputs))

    return await serve_pooled(request, body, engine, model, params, "classify", render)
