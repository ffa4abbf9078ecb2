"""The OpenAI error body and the handlers that turn every failure into it.

Messages are short, never echo the request body, and never carry a traceback or a path.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from pagedserve.errors import EngineDeadError, InvalidRequestError

logger = logging.getLogger("pagedserve")

MAX_MESSAGE_CHARS = 512
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    503: "service_unavailable",
    500: "server_error",
}
RETRY_AFTER_SECONDS = "1"


class APIError(Exception):
    """Raised by handlers: becomes an OpenAI error response with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def unavailable(message: str, code: str) -> APIError:
    return APIError(503, message, code=code, headers={"Retry-After": RETRY_AFTER_SECONDS})


def error_body(status: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def sse_error_event(status: int, message: str, code: str | int | None = None) -> str:
    """The one event sent when a stream fails after it began (then `[DONE]`)."""
    return f"data: {json.dumps(error_body(status, message, None, code))}\n\n"


def invalid_request(error: ValueError) -> APIError:
    """A ValueError from validation (SamplingParams, the engine) as a 400 naming the field."""
    param = getattr(error, "param", None)
    code = getattr(error, "code", None)
    return APIError(400, str(error), param=param, code=code)


def _validation_param(loc: tuple[Any, ...]) -> str | None:
    # FastAPI prefixes body fields with "body"; union branches add their type name (e.g. "list[int]").
    parts = [
        str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))
    ]
    return ".".join(parts) or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "tagged-union"}


def validation_error_response(
    exc: RequestValidationError, content_type: str = "application/json"
) -> JSONResponse:
    if "json" not in content_type.lower():
        # FastAPI does not parse bodies without a JSON content type (a CSRF guard); say so plainly.
        return error_response(
            400, "Send the body as JSON with Content-Type: application/json.", code="invalid_json"
        )
    errors = exc.errors()
    if not errors:
        return error_response(400, "Invalid request body.")
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return error_response(400, "The request body is not valid JSON.", code="invalid_json")
    loc = tuple(first.get("loc", ()))
    param = _validation_param(loc)
    if kind == "model_attributes_type" and param is None:
        return error_response(400, "The request body must be a JSON object.", code="invalid_json")
    if kind == "missing" and param is None:
        return error_response(400, "The request body is missing.", code="invalid_json")
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more errors)"
    return error_response(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return error_response(400, str(exc), exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc, request.headers.get("content-type", ""))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, "Not found.", code="not_found")
        if exc.status_code == 405:
            return error_response(405, "Method not allowed.", code="method_not_allowed")
        return error_response(exc.status_code, str(exc.detail)[:200])

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(500, "The engine stopped; the server is restarting.", code="engine_dead")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s", request.url.path)
        return error_response(500, "Internal server error.", code="internal_error")
