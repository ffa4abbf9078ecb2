"""One HTTP generation request → one or more engine requests: admission, refusal before the response starts,
merged streaming, cancellation on client disconnect, and the per-request log line."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from starlette.responses import JSONResponse, Response

from pagedserve.engine.prompts import TokensPrompt
from pagedserve.engine.protocol import EngineClient
from pagedserve.errors import EngineDeadError
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import SamplingParams
from pagedserve.server.errors import APIError, invalid_request, sse_error_event
from pagedserve.server.state import ServerState

logger = logging.getLogger("pagedserve")
T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client went away before the response started."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it if the client disconnects first (then ClientDisconnectedError)."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled() or not work.done():
        raise ClientDisconnectedError
    return work.result()


@dataclass
class _Tracked:
    request_id: str
    prompt_token_ids: list[int]
    generator: AsyncIterator[RequestOutput]
    first: RequestOutput | None = None
    last: RequestOutput | None = None
    first_token_at: float | None = None


@dataclass
class Generation:
    """The engine requests of one HTTP request. Use `start()`, then `stream()` or `collect()`, then `close()`."""

    state: ServerState
    engine: EngineClient
    base_id: str
    prompts: list[list[int]]
    params: SamplingParams
    cache_salt: str | None = None  # vLLM's prefix-cache isolation, passed with every prompt
    priority: int = 0  # vLLM's: lower first under --scheduling-policy priority
    lora_request: LoRARequest | None = None  # the adapter the request's model names (--lora-modules)
    prompt_params: list[SamplingParams] | None = (
        None  # one per prompt where they differ (a cross-encoder's pairs)
    )
    started_at: float = field(default_factory=time.monotonic)
    tracked: list[_Tracked] = field(default_factory=list)
    admitted: int = 0
    closed: bool = False
    feeders: list[asyncio.Task[None]] = field(default_factory=list)  # one per prompt while streaming merged

    def admit(self) -> None:
        self.state.admit(len(self.prompts))
        self.admitted = len(self.prompts)

    async def start(self) -> None:
        """Submit every prompt and wait for each one's first output, so refusals (context length, bad ids)
        become a 400 before any byte of the response is sent."""
        for index, token_ids in enumerate(self.prompts):
            request_id = self.base_id if len(self.prompts) == 1 else f"{self.base_id}-{index}"
            prompt: TokensPrompt = {"prompt_token_ids": token_ids}
            if self.cache_salt is not None:
                prompt["cache_salt"] = self.cache_salt
            params = self.params if self.prompt_params is None else self.prompt_params[index]
            generator = self.engine.generate(prompt, params, request_id, self.priority, self.lora_request)
            self.tracked.append(_Tracked(request_id, token_ids, generator))
        firsts = await asyncio.gather(*(anext(t.generator) for t in self.tracked), return_exceptions=True)
        for tracked, first in zip(self.tracked, firsts):
            if isinstance(first, BaseException):
                raise first
            self._record(tracked, first)

    def _record(self, tracked: _Tracked, output: RequestOutput) -> None:
        tracked.last = output
        if tracked.first_token_at is None and any(c.token_ids for c in output.outputs):
            tracked.first_token_at = time.monotonic()

    async def stream(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) pairs, the first outputs included, until every request finished."""
        for index, tracked in enumerate(self.tracked):
            assert tracked.last is not None
            yield index, tracked.last
        if len(self.tracked) == 1:
            tracked = self.tracked[0]
            if not tracked.last.finished:  # type: ignore[union-attr]
                async for output in tracked.generator:
                    self._record(tracked, output)
                    yield 0, output
            return
        merged: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = asyncio.Queue()

        async def feed(index: int, tracked: _Tracked) -> None:
            try:
                if not tracked.last.finished:  # type: ignore[union-attr]
                    async for output in tracked.generator:
                        await merged.put((index, output))
            except Exception as error:  # noqa: BLE001 - forwarded to the consumer
                await merged.put(error)
            await merged.put(None)

        feeders = [asyncio.create_task(feed(i, t)) for i, t in enumerate(self.tracked)]
        self.feeders = feeders
        try:
            remaining = len(feeders)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                self._record(self.tracked[item[0]], item[1])
                yield item
        finally:
            await self._stop_feeders()

    async def _stop_feeders(self) -> None:
        for feeder in self.feeders:
            feeder.cancel()  # cancelling a feeder ends its engine stream, which aborts the request
        await asyncio.gather(*self.feeders, return_exceptions=True)

    async def collect(self) -> list[RequestOutput]:
        """The final output of every request (non-streaming responses)."""
        async for _ in self.stream():
            pass
        return [t.last for t in self.tracked]  # type: ignore[misc]

    async def close(self, error: BaseException | None = None) -> None:
        """Abort what is unfinished, release admission, log one line per engine request."""
        if self.closed:
            return
        self.closed = True
        await self._stop_feeders()
        for tracked in self.tracked:
            try:
                await tracked.generator.aclose()  # type: ignore[attr-defined]
            except RuntimeError:  # still held by a cancelled feeder task, whose exit aborts it
                pass
        if self.admitted:
            self.state.release(self.admitted)
        if isinstance(error, EngineDeadError):
            for _ in self.tracked:
                self.state.metrics.count_error()
        if self.state.config.log_requests:
            for tracked in self.tracked:
                self._log(tracked, error)

    def _log(self, tracked: _Tracked, error: BaseException | None) -> None:
        now = time.monotonic()
        last = tracked.last
        generated = sum(len(c.token_ids) for c in last.outputs) if last else 0
        if last is not None and last.finished:
            reasons = ",".join(sorted({c.finish_reason or "?" for c in last.outputs}))
        else:
            reasons = "error" if isinstance(error, EngineDeadError) else "abort"
        ttft = f"{tracked.first_token_at - self.started_at:.3f}s" if tracked.first_token_at else "-"
        logger.info(
            "Finished request %s: prompt_tokens=%d generation_tokens=%d ttft=%s e2e=%.3fs finish_reason=%s",
            tracked.request_id, len(tracked.prompt_token_ids), generated, ttft, now - self.started_at, reasons,
        )  # fmt: skip


def new_request_ids(prefix: str, client_id: str | None) -> tuple[str, str]:
    """(response id, engine request id). The response id carries the client's x-request-id when given, so
    logs correlate; the engine id adds a random suffix so that a reused x-request-id cannot collide."""
    if not client_id:
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        return response_id, response_id
    response_id = f"{prefix}-{client_id}"
    return response_id, f"{response_id}-{uuid.uuid4().hex[:8]}"


async def respond(generation: Generation, build: Callable[[], Awaitable[Response]]) -> Response:
    """The generation endpoints' shared ending: bad input → 400, a vanished client → 499 (nobody reads it), any
    other error propagates; the generation is closed on every path except a stream, which closes itself."""
    try:
        return await build()
    except ValueError as error:
        await generation.close(error)
        raise invalid_request(error) from None
    except ClientDisconnectedError:
        await generation.close()
        return JSONResponse({}, status_code=499)
    except BaseException as error:
        await generation.close(error)
        raise


async def guarded_stream(generation: Generation, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The end every SSE stream shares: an engine death or API error after the stream began becomes one error
    event; the generation is always closed; `[DONE]` always comes last."""
    error: BaseException | None = None
    try:
        async for event in events:
            yield event
    except EngineDeadError as dead:
        error = dead
        yield sse_error_event(500, "The engine stopped; the server is restarting.", "engine_dead")
    except APIError as api_error:
        error = api_error
        yield sse_error_event(api_error.status, api_error.message, api_error.code)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await generation.close(error)
    yield "data: [DONE]\n\n"
