"""Errors the engine raises on bad input; the server maps them to the OpenAI error shape."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """Bad input. `param` names the offending field (OpenAI's `param`), `code` is OpenAI's `code`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthError(InvalidRequestError):
    """Prompt (+ max_tokens) does not fit max_model_len or the whole KV cache. OpenAI's wording, code
    `context_length_exceeded`: gateways match on it."""

    def __init__(self, max_model_len: int, requested: int, prompt_tokens: int, param: str | None) -> None:
        message = (
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} tokens ({prompt_tokens} in the messages, {requested - prompt_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        super().__init__(message, param=param, code="context_length_exceeded")
        self.max_model_len = max_model_len
        self.requested = requested


class EngineDeadError(RuntimeError):
    """The engine loop stopped; no further requests can be served."""


class BundledModelMissingError(FileNotFoundError):
    """The default model package is not installed."""
