"""Per-request output queues on the event loop, shared by both `EngineClient`s (AsyncEngine, EngineCoreClient)."""

from __future__ import annotations

import asyncio

from pagedserve.outputs import RequestOutput

OutputQueue = asyncio.Queue[RequestOutput | BaseException]


class RequestAbortedError(Exception):
    """Ends the stream of a request that `abort()` cancelled."""


async def next_output(stream: OutputQueue) -> RequestOutput:
    """The newest output queued for a request (outputs are cumulative: a slow consumer skips stale ones), or the
    error that ended it."""
    item = await stream.get()
    while not stream.empty() and not isinstance(item, BaseException):
        item = stream.get_nowait()
    if isinstance(item, BaseException):
        raise item
    return item
