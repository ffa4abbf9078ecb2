"""ASGI middleware: every response carries `x-request-id` (the client's, when usable, else a new one)."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedserve.server.request_context import CLIENT_ID_KEY, REQUEST_ID_KEY

# Ids end up in response ids and log lines: accept only short, plain ones.
_USABLE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1")
                client_id = text if _USABLE_ID.match(text) else None
                break
        request_id = client_id or uuid.uuid4().hex
        scope[CLIENT_ID_KEY] = client_id
        scope[REQUEST_ID_KEY] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
