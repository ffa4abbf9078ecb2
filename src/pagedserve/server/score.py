"""vLLM's scoring routes on a model served for pooling: POST /score (/v1/score) scores text pairs, POST /rerank
(/v1/rerank, /v2/rerank: Jina's and Cohere's shape) orders documents by their score against a query.

A cross-encoder (BertForSequenceClassification, XLMRobertaForSequenceClassification) runs each pair as one prompt
(`[CLS] text_1 [SEP] text_2 [SEP]`, the second text's token types 1) and its head gives the score, through a sigmoid
unless `use_activation` is false. An embedding model scores a pair by the cosine similarity of the two texts'
embeddings, each distinct text embedded once: vLLM's two rules (engine/pooling_requests.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pagedserve.engine.pooling_requests import cosine_scores, encode_pairs, pooling_request, text_pairs
from pagedserve.errors import InvalidRequestError
from pagedserve.outputs import RequestOutput
from pagedserve.pooling_params import PoolingParams
from pagedserve.server.completions import start_prompts
from pagedserve.server.errors import APIError
from pagedserve.server.generation import Generation, new_request_ids, respond, until_disconnect
from pagedserve.server.openai.protocol import RerankRequest, ScoreRequest
from pagedserve.server.pooled import list_body, pooled_params, use_activation
from pagedserve.server.request_context import client_request_id, server_state

router = APIRouter()

# (response id, model name, one score a pair, prompt tokens run) -> the response body
Render = Callable[[str, str, list[float], int], dict[str, Any]]


async def _pair_scores(
    request: Request,
    body: ScoreRequest | RerankRequest,
    pairs: list[tuple[str, str]],
    prefix: str,
    render: Render,
) -> Response:
    """Scores every pair (one engine request a pair, or a distinct text) and answers with `render`'s body."""
    state = server_state(request)
    model = state.check_model(body.model)
    engine = state.require_pooling_task(("embed", "score"), "Score")
    truncate = body.truncate_prompt_tokens
    if truncate is not None and (truncate == 0 or truncate < -1):
        raise APIError(
            400, "truncate_prompt_tokens must be -1 or at least 1.", param="truncate_prompt_tokens"
        )
    if truncate == -1:
        truncate = engine.info.max_model_len
    response_id, engine_id = new_request_ids(prefix, client_request_id(request))
    cross_encoder = engine.info.pooling_task == "score"
    texts = list(dict.fromkeys(text for pair in pairs for text in pair))  # each distinct text embedded once
    generation = Generation(
        state, engine, engine_id, list(pairs if cross_encoder else texts), pooled_params(PoolingParams(), truncate), None,
        body.priority or 0, state.lora_request(model),
    )  # fmt: skip
    generation.admit()

    async def build() -> Response:
        if cross_encoder:
            ids, starts = await until_disconnect(
                request, state.off_loop(encode_pairs, engine.tokenizer, pairs, truncate)
            )
            activation = use_activation(body)
            generation.prompts = ids
            generation.prompt_params = [
                pooling_request(
                    PoolingParams(normalize=False, use_activation=activation, token_type_start=start)
                )
                for start in starts
            ]
            await until_disconnect(request, generation.start())
        else:
            await start_prompts(request, generation, texts, True)  # type: ignore[arg-type]
        outputs: list[RequestOutput] = await until_disconnect(request, generation.collect())
        await generation.close()
        vectors = [output.outputs[0].embedding or [] for output in outputs]
        tokens = sum(len(output.prompt_token_ids) for output in outputs)
        if cross_encoder:
            scores = [vector[0] for vector in vectors]
        else:
            scores = cosine_scores(pairs, dict(zip(texts, vectors)))
        return JSONResponse(render(response_id, model, scores, tokens))

    return await respond(generation, build)


@router.post("/score", response_model=None)
@router.post("/v1/score", response_model=None)
async def create_score(body: ScoreRequest, request: Request) -> Any:
    try:
        pairs = text_pairs(body.text_1, body.text_2)
    except InvalidRequestError as error:
        raise APIError(400, str(error), param=error.param) from None

    def render(response_id: str, model: str, scores: list[float], tokens: int) -> dict[str, Any]:
        data = [{"index": i, "object": "score", "score": score} for i, score in enumerate(scores)]
        return list_body(response_id, model, data, tokens)

    return await _pair_scores(request, body, pairs, "score", render)


@router.post("/rerank", response_model=None)
@router.post("/v1/rerank", response_model=None)
@router.post("/v2/rerank", response_model=None)
async def create_rerank(body: RerankRequest, request: Request) -> Any:
    if not body.query:
        raise APIError(400, "query must not be empty.", param="query")
    if not body.documents or any(not document for document in body.documents):
        raise APIError(400, "documents must hold at least one document, and no empty one.", param="documents")
    if body.top_n < 0:
        raise APIError(400, "top_n must be 0 (every document) or more.", param="top_n")

    def render(response_id: str, model: str, scores: list[float], tokens: int) -> dict[str, Any]:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep the documents' order
        if body.top_n:
            order = order[: body.top_n]
        results = [
            {"index": i, "document": {"text": body.documents[i]}, "relevance_score": scores[i]} for i in order
        ]
        return {"id": response_id, "model": model, "usage": {"total_tokens": tokens}, "results": results}

    pairs = [(body.query, document) for document in body.documents]
    return await _pair_scores(request, body, pairs, "rerank", render)
