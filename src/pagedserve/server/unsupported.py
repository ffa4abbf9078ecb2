"""Request fields of the OpenAI / vLLM models that pagedserve does not implement: a 400 naming the field when it
is set to anything but its no-op value, never a silent drop that changes what the client asked for. Fields that
cannot change the output (bookkeeping such as `store` or `user`) are accepted; any other unknown field is
accepted with a warning logged once per name, as vLLM does.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from pagedserve.server.errors import APIError

logger = logging.getLogger("pagedserve")

_NOT_SET: tuple[Any, ...] = (None, False, 0, "", [], {})

# field -> (values that mean "not used", why / what to use instead)
_REFUSED_ANYWHERE: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_beam_search": (_NOT_SET, "beam search is not implemented"),
    "length_penalty": (
        (None, 1, 1.0),
        "length_penalty only applies to beam search, which is not implemented",
    ),
    "logits_processors": (_NOT_SET, "custom logits processors are not supported"),
    "kv_transfer_params": (_NOT_SET, "disaggregated prefill (kv_transfer_params) is not supported"),
    "vllm_xargs": (_NOT_SET, "vllm_xargs is not supported"),
    "thinking_token_budget": ((None,), "thinking_token_budget is not implemented"),
    "guided_json": (
        (None,),
        "guided_json was removed in vLLM: use structured_outputs.json or response_format",
    ),
    "guided_regex": ((None,), "guided_regex was removed in vLLM: use structured_outputs.regex"),
    "guided_choice": ((None,), "guided_choice was removed in vLLM: use structured_outputs.choice"),
    "guided_grammar": ((None,), "guided_grammar was removed in vLLM: use structured_outputs.grammar"),
    "guided_json_object": (
        _NOT_SET,
        "guided_json_object was removed in vLLM: use structured_outputs.json_object",
    ),
    "guided_decoding_backend": ((None,), "use --structured-outputs-config to choose the backend"),
    "guided_whitespace_pattern": ((None,), "guided_whitespace_pattern is not supported"),
    "structured_outputs_config": ((None,), "a server setting: --structured-outputs-config"),
}

_REFUSED_CHAT: dict[str, tuple[tuple[Any, ...], str]] = {
    "functions": (_NOT_SET, "functions is deprecated by OpenAI and not supported: use tools"),
    "function_call": (
        (None, "none"),
        "function_call is deprecated by OpenAI and not supported: use tool_choice",
    ),
    "audio": ((None,), "audio output is not supported"),
    "modalities": ((None, ["text"]), "only text output is supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "web_search_options": ((None,), "web search is not supported"),
    "reasoning_effort": ((None,), "reasoning_effort is not implemented (no template for it)"),
    "verbosity": ((None,), "verbosity is not supported"),
    "echo": (_NOT_SET, "echo is not implemented for chat"),
    "chat_template": (
        (None,),
        "a request's own chat_template is not accepted: start the server with --chat-template",
    ),
    "documents": (_NOT_SET, "documents is not implemented"),
    "mm_processor_kwargs": (_NOT_SET, "multimodal inputs are not supported"),
}

_REFUSED_COMPLETIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "prompt_embeds": ((None,), "prompt_embeds is not supported"),
}

# /v1/responses (its own fields; the vLLM extensions above are not part of its request model).
_REFUSED_RESPONSES: dict[str, tuple[tuple[Any, ...], str]] = {
    "previous_response_id": (
        (None,),
        "previous_response_id needs a response store, which this server has not",
    ),
    "conversation": ((None,), "conversations need a response store, which this server has not"),
    "background": ((None, False), "background responses are not implemented"),
    "reasoning": ((None, {}, {"effort": None}), "reasoning effort is not implemented"),
    "include": ((None, []), "include is not implemented"),
    "top_logprobs": ((None, 0), "top_logprobs is not implemented on /v1/responses"),
    "truncation": ((None, "disabled"), "truncation other than disabled is not implemented"),
    "prompt": ((None,), "stored prompts are not implemented"),
    "max_tool_calls": ((None,), "max_tool_calls is not implemented"),
}


# Bookkeeping fields that cannot change the output.
_ACCEPTED = {"store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier", "request_id"}  # fmt: skip

_warned: set[str] = set()


def refuse_unsupported_fields(body: BaseModel, endpoint: str) -> None:
    """400 for a set field we do not implement; warn once about other unknown fields (`endpoint`: chat,
    completions or responses)."""
    if endpoint == "responses":
        refused = _REFUSED_RESPONSES
    else:
        refused = {**_REFUSED_ANYWHERE, **(_REFUSED_CHAT if endpoint == "chat" else _REFUSED_COMPLETIONS)}
    for name, value in (body.model_extra or {}).items():
        rule = refused.get(name)
        if rule is not None:
            no_op_values, why = rule
            if value is not None and not any(type(value) is type(v) and value == v for v in no_op_values):
                raise APIError(400, f"{name}: {why}.", param=name)
        elif name not in _ACCEPTED and name not in _warned:
            _warned.add(name)
            logger.warning("ignoring unknown request field %r (first seen on /%s)", name, endpoint)
