"""vLLM's POST /classify (/v1/classify): each input's probabilities over a sequence classifier's labels (softmax;
a sigmoid for a one-label model), the most likely label named as config.json's id2label names it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams
from pagedserve.server.completions import prompt_list, start_prompts
from pagedserve.server.errors import APIError
from pagedserve.server.generation import Generation, new_request_ids, respond, until_disconnect
from pagedserve.server.openai.protocol import ClassificationRequest
from pagedserve.server.request_context import client_request_id, server_state
from pagedserve.server.score import use_activation

router = APIRouter()


@router.post("/classify", response_model=None)
@router.post("/v1/classify", response_model=None)
async def create_classification(body: ClassificationRequest, request: Request) -> Any:
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_pooling_task(("score", "classify"), "Classification")
    try:
        params = SamplingParams(
            max_tokens=1, temperature=0.0, detokenize=False, ignore_eos=True,
            truncate_prompt_tokens=body.truncate_prompt_tokens,
            pooling=PoolingParams(normalize=False, use_activation=use_activation(body)),
        )  # fmt: skip
    except ValueError as error:
        raise APIError(400, str(error), param=getattr(error, "param", None)) from None
    prompts = prompt_list(body.input)
    response_id, engine_id = new_request_ids("classify", client_request_id(request))
    generation = Generation(
        state, engine, engine_id, prompts, params, None, body.priority or 0, state.lora_request(model)
    )
    generation.admit()
    labels = engine.info.labels

    async def build() -> Any:
        await start_prompts(request, generation, prompts, body.add_special_tokens is not False)
        outputs = await until_disconnect(request, generation.collect())
        await generation.close()
        data = []
        for index, output in enumerate(outputs):
            probs = output.outputs[0].embedding or []
            best = max(range(len(probs)), key=probs.__getitem__)
            data.append({"index": index, "label": labels[best], "probs": probs, "num_classes": len(probs)})
        tokens = sum(len(o.prompt_token_ids) for o in outputs)
        return JSONResponse(
            {
                "id": response_id,
                "object": "list",
                "created": int(time.time()),
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    return await respond(generation, build)
