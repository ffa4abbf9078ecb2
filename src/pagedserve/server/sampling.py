"""Request fields → `SamplingParams`, with the server-side limits (n cap, logprob caps) checked first."""

from __future__ import annotations

from typing import Any

from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams, logprobs_over_limit
from pagedserve.server.errors import APIError, invalid_request
from pagedserve.server.openai.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from pagedserve.server.unsupported import refuse_unsupported_fields

# Request field -> SamplingParams field, copied when the client set them (None keeps SamplingParams' default).
_COPIED = (
    "n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "min_tokens", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "allowed_token_ids", "bad_words",
    "truncate_prompt_tokens",
)  # fmt: skip


# OpenAI's range; SamplingParams itself only requires >= 0.
MAX_TEMPERATURE = 2.0
# OpenAI's range for a logit bias; larger values are clamped to it, as vLLM does.
MAX_LOGIT_BIAS = 100.0


def logit_bias(request: SamplingFields) -> dict[int, float] | None:
    """OpenAI's logit_bias (token ids as JSON keys) -> {token id: bias clamped to [-100, 100]}."""
    if request.logit_bias is None:
        return None
    bias = {}
    for key, value in request.logit_bias.items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(
                400, f"logit_bias keys must be token ids, got {key[:40]!r}.", param="logit_bias"
            ) from None
        bias[token] = min(MAX_LOGIT_BIAS, max(-MAX_LOGIT_BIAS, value))
    return bias


def structured_outputs(request: SamplingFields) -> StructuredOutputsParams | None:
    """response_format (OpenAI's) or structured_outputs (vLLM's) -> the constraint; both at once is refused."""
    fmt, so = request.response_format, request.structured_outputs
    if so is not None:
        if fmt is not None and fmt.type != "text":
            raise APIError(
                400, "Set response_format or structured_outputs, not both.", param="structured_outputs"
            )
        values = so.model_dump(by_alias=True, exclude_none=True)
        try:
            return StructuredOutputsParams(**values)
        except ValueError as error:
            raise invalid_request(error) from None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(
                400,
                "response_format json_schema needs json_schema.schema.",
                param="response_format.json_schema",
            )
        return StructuredOutputsParams(json=fmt.json_schema.schema_)
    tag = {"structures": fmt.structures, "triggers": fmt.triggers}
    if not fmt.structures or not fmt.triggers:
        raise APIError(
            400, "response_format structural_tag needs structures and triggers.", param="response_format"
        )
    return StructuredOutputsParams(structural_tag=tag)


def _common(request: SamplingFields, max_n: int, endpoint: str) -> dict[str, Any]:
    refuse_unsupported_fields(request, endpoint)
    values = {name: getattr(request, name) for name in _COPIED if getattr(request, name) is not None}
    if request.logit_bias:
        values["logit_bias"] = logit_bias(request)
    if request.prompt_logprobs is not None:
        if request.stream:
            raise APIError(400, "prompt_logprobs is not available when streaming.", param="prompt_logprobs")
        values["prompt_logprobs"] = request.prompt_logprobs
    constraint = structured_outputs(request)
    if constraint is not None:
        values["structured_outputs"] = constraint
    n = values.get("n", 1)
    if isinstance(n, int) and n > max_n:
        raise APIError(400, f"n must be at most {max_n} on this server.", param="n")
    temperature = values.get("temperature")
    if isinstance(temperature, float) and temperature > MAX_TEMPERATURE:
        raise APIError(400, f"temperature must be in [0, {MAX_TEMPERATURE}].", param="temperature")
    return values


def _build(values: dict[str, Any]) -> SamplingParams:
    try:
        return SamplingParams(**values)
    except ValueError as error:  # SamplingParams names the field in .param
        raise invalid_request(error) from None


def _apply_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> None:
    """The model's generation defaults (--generation-config) for the fields the client left unset; its
    max_tokens caps the request's, as vLLM's (None: the rest of the context)."""
    for name, value in defaults.items():
        if name != "max_tokens":
            values.setdefault(name, value)
    cap = defaults.get("max_tokens")
    if cap is not None:
        asked = values.get("max_tokens")
        values["max_tokens"] = cap if asked is None else min(asked, cap)


def check_logprobs(params: SamplingParams, max_logprobs: int, sample_field: str) -> None:
    """400 past --max-logprobs (the engine's check, made here to name the request's field: `sample_field` is
    top_logprobs in chat, logprobs in completions)."""
    if over := logprobs_over_limit(params, max_logprobs):
        field, message = over
        raise APIError(400, message, param=sample_field if field == "logprobs" else field)


def chat_sampling_params(
    request: ChatCompletionRequest, max_n: int, defaults: dict[str, Any] | None = None
) -> SamplingParams:
    values = _common(request, max_n, "chat")
    # max_completion_tokens is the newer spelling; vLLM's benchmark sends it. null: the rest of the context.
    values["max_tokens"] = (
        request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    )
    _apply_defaults(values, defaults or {})
    if request.top_logprobs is not None:
        if request.top_logprobs < 0:  # the engine checks the upper bound (--max-logprobs)
            raise APIError(400, "top_logprobs must be >= 0.", param="top_logprobs")
        if request.top_logprobs > 0 and not request.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs")
    if request.logprobs:
        values["logprobs"] = request.top_logprobs or 0
    return _build(values)


def completion_sampling_params(
    request: CompletionRequest, max_n: int, defaults: dict[str, Any] | None = None
) -> SamplingParams:
    values = _common(request, max_n, "completions")
    # Unset: OpenAI's 16. null: the rest of the context.
    values["max_tokens"] = request.max_tokens if "max_tokens" in request.model_fields_set else 16
    _apply_defaults(values, defaults or {})
    if request.best_of is not None and request.best_of != (request.n or 1):
        raise APIError(400, "best_of other than n is not supported.", param="best_of")
    if request.suffix:
        raise APIError(400, "suffix is not supported.", param="suffix")
    if request.logprobs is not None:
        if request.logprobs < 0:  # the engine checks the upper bound (--max-logprobs)
            raise APIError(400, "logprobs must be >= 0.", param="logprobs")
        values["logprobs"] = request.logprobs
        if request.echo:  # the echoed prompt's logprobs; prompt_logprobs asked as well: the larger
            values["prompt_logprobs"] = max(request.logprobs, values.get("prompt_logprobs") or 0)
    return _build(values)
