"""Per-request values the middleware puts in the ASGI scope, and the app's ServerState."""

from __future__ import annotations

from fastapi import Request

from pagedserve.server.state import ServerState

REQUEST_ID_KEY = "pagedserve.request_id"  # the id echoed in x-request-id
CLIENT_ID_KEY = "pagedserve.client_request_id"  # the client's own x-request-id, when it sent a usable one


def server_state(request: Request) -> ServerState:
    return request.app.state.pagedserve


def client_request_id(request: Request) -> str | None:
    return request.scope.get(CLIENT_ID_KEY)
