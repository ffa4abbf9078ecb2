"""Small real HTTP servers that stream like an OpenAI server, for the benchmark client's tests.

They run aiohttp's web server on 127.0.0.1 in a background thread, so the client under test talks real HTTP.
What each one does (usage chunk or not, which requests fail, which `/v1/models` shape) is set per test.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VLLM_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "stub-model",
            "object": "model",
            "created": 1700000000,
            "owned_by": "vllm",
            "root": "stub-model",
            "parent": None,
            "max_model_len": 2048,
        }
    ],
}
LLAMACPP_MODELS = {
    "models": [{"name": "/models/stub.gguf", "model": "/models/stub.gguf", "type": "model"}],
    "object": "list",
    "data": [
        {
            "id": "/models/stub.gguf",
            "object": "model",
            "created": 1700000000,
            "owned_by": "llamacpp",
            "meta": {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192},
        }
    ],
}


@dataclass
class StubBehaviour:
    send_usage: bool = True
    first_token_delay_s: float = 0.02
    token_delay_s: float = 0.002
    fail_every: int = 0  # every k-th request (1-based count) answers HTTP 500
    stream_error_every: int = 0  # every k-th request sends an error event after two tokens
    models: dict[str, Any] = field(default_factory=lambda: VLLM_MODELS)
    piece: str = " tok"  # one token of the bundled tokenizer per chunk
    requests: list[dict[str, Any]] = field(default_factory=list)  # bodies received


def _sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def _app(behaviour: StubBehaviour) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response(behaviour.models)

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        behaviour.requests.append(body)
        number = len(behaviour.requests)
        chat = request.path.endswith("/chat/completions")
        if behaviour.fail_every and number % behaviour.fail_every == 0:
            error = {"error": {"message": "stub overloaded", "type": "server_error", "code": 500}}
            return web.json_response(error, status=500)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if chat:  # vLLM's first chat chunk: the role, no content yet
            await response.write(
                _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            )
        await asyncio.sleep(behaviour.first_token_delay_s)
        for i in range(max_tokens):
            if behaviour.stream_error_every and number % behaviour.stream_error_every == 0 and i == 2:
                await response.write(_sse({"error": {"message": "engine died", "type": "server_error"}}))
                await response.write(_sse(b"[DONE]"))
                return response
            if i:
                await asyncio.sleep(behaviour.token_delay_s)
            last = i == max_tokens - 1
            if chat:
                choice = {
                    "index": 0,
                    "delta": {"content": behaviour.piece},
                    "finish_reason": "length" if last else None,
                }
            else:
                choice = {"index": 0, "text": behaviour.piece, "finish_reason": "length" if last else None}
            await response.write(_sse({"id": f"cmpl-{number}", "choices": [choice]}))
        if behaviour.send_usage:
            usage = {"prompt_tokens": 10, "completion_tokens": max_tokens, "total_tokens": 10 + max_tokens}
            await response.write(_sse({"id": f"cmpl-{number}", "choices": [], "usage": usage}))
        await response.write(_sse(b"[DONE]"))
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    return app


class StubServer:
    """aiohttp server on an ephemeral loopback port, in its own thread and event loop."""

    def __init__(self, behaviour: StubBehaviour) -> None:
        self.behaviour = behaviour
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self.url

    async def _start(self) -> None:
        self.runner = web.AppRunner(_app(self.behaviour))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# The keys of vLLM's result file that users' scripts read (issue 5): ours must carry every one.
VLLM_RESULT_KEYS = [
    "completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "total_token_throughput", "request_goodput",
] + [f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el") for stat in ("mean", "median", "p99")]  # fmt: skip


def assert_png_drawn(path: Any) -> None:
    """The file opens as an image, has a size, and is not one flat colour."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        extrema = image.convert("L").getextrema()
        assert extrema[0] < extrema[1], "the plot is blank"
