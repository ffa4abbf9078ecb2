"""POST /tokenize and /detokenize (vLLM's extra endpoints), run on the tokenizer thread."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pagedserve.server.chat_messages import chat_options, plain_messages, render_chat
from pagedserve.server.errors import APIError
from pagedserve.server.openai.protocol import DetokenizeRequest, TokenizeRequest
from pagedserve.server.request_context import server_state

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.check_model(body.model)
    engine = state.require_engine()
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "Give exactly one of prompt or messages.", param="prompt")
    if body.messages is not None:
        if not body.messages:
            raise APIError(400, "messages must not be empty.", param="messages")
        messages = plain_messages(body.messages)
        tokens = await state.off_loop(
            render_chat,
            engine,
            messages,
            # vLLM's default for a chat is no special tokens (the template holds the BOS): only when asked.
            chat_options(
                body,
                state.config.chat_template_content_format,
                add_special_tokens="add_special_tokens" in body.model_fields_set
                and bool(body.add_special_tokens),
            ),
        )
    else:
        tokens = await state.off_loop(
            lambda: engine.tokenizer.encode(
                body.prompt, add_special_tokens=body.add_special_tokens is not False
            )
        )
    result: dict[str, Any] = {
        "count": len(tokens),
        "max_model_len": engine.info.max_model_len,
        "tokens": tokens,
    }
    if body.return_token_strs:  # vLLM's: each token as the tokenizer spells it
        result["token_strs"] = engine.tokenizer.convert_ids_to_tokens(tokens)
    return result


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = server_state(request)
    state.check_model(body.model)
    engine = state.require_engine()
    vocab_size = engine.info.vocab_size
    if any(not 0 <= t < vocab_size for t in body.tokens):
        raise APIError(400, f"Token ids must be in [0, {vocab_size}).", param="tokens")
    text = await state.off_loop(engine.tokenizer.decode, body.tokens)
    return {"prompt": text}
