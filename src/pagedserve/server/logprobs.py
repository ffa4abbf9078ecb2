"""Engine log-probabilities (`LogprobsDict` per position) in OpenAI's chat and completions shapes."""

from __future__ import annotations

from typing import Any

from pagedserve.outputs import Logprob, LogprobsDict


def token_text(token_id: int, logprob: Logprob | None, tokenizer: Any, as_id: bool = False) -> str:
    """A token as logprobs show it: its text, or "token_id:N" (return_tokens_as_token_ids)."""
    if as_id:
        return f"token_id:{token_id}"
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return tokenizer.decode([token_id])


def _ranked(entry: LogprobsDict, top: int) -> list[tuple[int, Logprob]]:
    ranked = sorted(entry.items(), key=lambda item: (item[1].rank or 1 << 30, -item[1].logprob))
    return ranked[:top]


def chat_logprobs(
    entries: list[LogprobsDict], token_ids: list[int], top: int, tokenizer: Any, as_ids: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """`choices[i].logprobs` of a chat completion for the given generated positions."""
    content = []
    for token_id, entry in zip(token_ids, entries):
        sampled = entry.get(token_id)
        text = token_text(token_id, sampled, tokenizer, as_ids)
        alternatives = []
        for alt_id, alt in _ranked(entry, top):
            alt_text = token_text(alt_id, alt, tokenizer, as_ids)
            alternatives.append(
                {"token": alt_text, "logprob": _finite(alt.logprob), "bytes": list(alt_text.encode())}
            )
        content.append(
            {
                "token": text,
                "logprob": _finite(sampled.logprob) if sampled else -9999.0,
                "bytes": list(text.encode()),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content}


def completion_logprobs(
    entries: list[LogprobsDict | None],
    token_ids: list[int],
    top: int,
    tokenizer: Any,
    text_offset: int,
    as_ids: bool = False,
) -> dict[str, list[Any]]:
    """`choices[i].logprobs` of a text completion. A None entry (the first prompt token when echoing) has
    no log-probability."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for token_id, entry in zip(token_ids, entries):
        sampled = entry.get(token_id) if entry else None
        text = token_text(token_id, sampled, tokenizer, as_ids)
        tokens.append(text)
        offsets.append(text_offset)
        text_offset += len(text)
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(_finite(sampled.logprob) if sampled else -9999.0)
        ranked = {token_text(i, lp, tokenizer, as_ids): _finite(lp.logprob) for i, lp in _ranked(entry, top)}
        if sampled is not None:
            ranked.setdefault(text, _finite(sampled.logprob))
        top_logprobs.append(ranked)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


def prompt_logprobs_field(
    entries: list[LogprobsDict | None] | None, prompt_token_ids: list[int], top: int, tokenizer: Any
) -> list[Any] | None:
    """vLLM's `prompt_logprobs`: per prompt token None (the first: no context) or {token id: {logprob, rank,
    decoded_token}} holding the prompt's own token and the `top` most likely ones."""
    if entries is None:
        return None
    result: list[Any] = []
    for token_id, entry in zip(prompt_token_ids, entries):
        if entry is None:
            result.append(None)
            continue
        keep = {alt_id for alt_id, _ in _ranked(entry, top)} | {token_id}
        result.append(
            {
                str(alt_id): {
                    "logprob": _finite(lp.logprob),
                    "rank": lp.rank,
                    "decoded_token": token_text(alt_id, lp, tokenizer),
                }
                for alt_id, lp in entry.items()
                if alt_id in keep
            }
        )
    return result


def _finite(value: float) -> float:
    # -inf is not valid JSON; OpenAI clients expect a number.
    return max(value, -9999.0) if value == value else -9999.0
