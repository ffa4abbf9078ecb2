"""Prompts as vLLM takes them -> (text, token ids), validated."""

from __future__ import annotations

from typing import Any, TypedDict, Union

from pagedserve.errors import InvalidRequestError


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]  # required
    cache_salt: str  # vLLM's: prefix-cache hits only between requests with the same salt


class TextPrompt(TypedDict, total=False):
    prompt: str  # required
    cache_salt: str


PromptInput = Union[str, list[int], TokensPrompt, TextPrompt]


def prompt_cache_salt(prompt: PromptInput) -> str | None:
    """A prompt dict's cache_salt (a non-empty string), or None."""
    salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise InvalidRequestError("cache_salt must be a non-empty string", param="cache_salt")
    return salt


def resolve_prompt(tokenizer: Any, prompt: PromptInput, vocab_size: int) -> tuple[str | None, list[int]]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            prompt = list(prompt["prompt_token_ids"])  # type: ignore[typeddict-item]
        elif "prompt" in prompt:
            prompt = prompt["prompt"]  # type: ignore[typeddict-item]
        else:
            raise InvalidRequestError("prompt dict needs 'prompt' or 'prompt_token_ids'", param="prompt")
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        token_ids = tokenizer.encode(prompt, add_special_tokens=True)
        if not token_ids:
            raise InvalidRequestError("prompt encodes to no tokens", param="prompt")
        return prompt, token_ids
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        for token in prompt:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                raise InvalidRequestError(
                    f"prompt token ids must be integers in [0, {vocab_size}), got {str(token)[:32]!r}",
                    param="prompt",
                )
        return None, list(prompt)
    raise InvalidRequestError(
        "prompt must be a string, a list of token ids, or a prompt dict", param="prompt"
    )
