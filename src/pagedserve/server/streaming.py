"""Server-sent events and the usage block shared by chat and completions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from pagedserve.outputs import RequestOutput

# No proxy buffering: each token must reach the client when it is produced.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def usage(outputs: list[RequestOutput], prompt_details: bool = False) -> dict[str, Any]:
    """OpenAI's usage; prompt_details (--enable-prompt-tokens-details): prompt_tokens_details.cached_tokens, the
    prompt tokens served from the prefix cache, when there are any (vLLM's rule)."""
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    completion_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    result: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    cached = sum(o.num_cached_tokens for o in outputs)
    if prompt_details and cached:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


def continuous_usage(options: Any) -> bool:
    """stream_options.continuous_usage_stats with include_usage (vLLM's): every chunk carries the usage so far."""
    return bool(options and options.include_usage and options.continuous_usage_stats)


def running_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class SSEResponse(StreamingResponse):
    """A text/event-stream response that runs `on_close` however it ends: finished, failed, or cancelled
    before the body was iterated (client gone), so admission and engine requests are always released."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()
