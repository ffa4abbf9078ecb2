"""ASGI middleware: `http_requests_total{handler,method,status}` and `http_request_duration_seconds`.

handler is the route's path template ("none" when no route matched), status is grouped ("2xx"), as the
prometheus-fastapi-instrumentator that vLLM uses reports them. /metrics itself is not counted.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedserve.server.metrics import ServerMetrics

_EXCLUDED = frozenset({"/metrics"})


class HTTPMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _EXCLUDED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or "none"
            method = scope["method"]
            self.metrics.http_requests.labels(
                handler=handler, method=method, status=f"{status // 100}xx"
            ).inc()
            self.metrics.http_duration.labels(handler=handler, method=method).observe(
                time.perf_counter() - started
            )
