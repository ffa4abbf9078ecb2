"""ASGI middleware: API key auth. Deny by default; only the probes (and /metrics, unless configured otherwise)
are open. The key is compared in constant time."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from pagedserve.server.errors import error_response

PROBE_PATHS = frozenset({"/health", "/ping", "/ready"})


def open_paths(metrics_require_auth: bool) -> frozenset[str]:
    return PROBE_PATHS if metrics_require_auth else PROBE_PATHS | {"/metrics"}


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.open_paths = open_paths

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401, "Missing or invalid API key.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
