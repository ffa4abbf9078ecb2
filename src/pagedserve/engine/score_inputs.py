"""What /score, /rerank and LLM.score run: text pairs as vLLM pairs them, each pair as a cross-encoder's prompt, and
the per-request parameters of both scoring rules (a cross-encoder's head, or two embeddings' cosine similarity)."""

from __future__ import annotations

from typing import Any

from pagedserve.errors import InvalidRequestError
from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams


def text_pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """vLLM's pairing: one text_1 against every text_2, or text_1 and text_2 of one length, in order."""
    firsts = [text_1] if isinstance(text_1, str) else list(text_1)
    seconds = [text_2] if isinstance(text_2, str) else list(text_2)
    for name, texts in (("text_1", firsts), ("text_2", seconds)):
        if not texts or any(not isinstance(text, str) or not text for text in texts):
            raise InvalidRequestError(f"{name} must hold at least one text, and no empty one.", param=name)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    elif len(firsts) != len(seconds):
        raise InvalidRequestError(
            "text_1 must hold one text or as many as text_2 (they are paired in order).", param="text_1"
        )
    return list(zip(firsts, seconds))


def encode_pairs(
    tokenizer: Any, pairs: list[tuple[str, str]], max_length: int | None
) -> tuple[list[list[int]], list[int | None]]:
    """Each pair as the tokenizer joins two texts, and where its second text's token types (1) start (None where the
    tokenizer gives no types, as XLM-R's); `max_length` truncates the longer text first (transformers' rule)."""
    ids, starts = [], []
    for first, second in pairs:
        kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length else {}
        encoded = tokenizer(first, second, **kwargs)
        ids.append(list(encoded["input_ids"]))
        types = list(encoded.get("token_type_ids") or [])
        starts.append(types.index(1) if 1 in types else None)
    return ids, starts


def pair_params(token_type_start: int | None, use_activation: bool) -> SamplingParams:
    """A cross-encoder pair's request: one pooled step, its head's score (unnormalized)."""
    pooling = PoolingParams(normalize=False, use_activation=use_activation, token_type_start=token_type_start)
    return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, ignore_eos=True, pooling=pooling)


def embedding_params(truncate_prompt_tokens: int | None = None) -> SamplingParams:
    """An embedding request (unit vector): ends after its prompt, on length."""
    return SamplingParams(
        max_tokens=1, temperature=0.0, detokenize=False, ignore_eos=True, truncate_prompt_tokens=truncate_prompt_tokens,
        pooling=PoolingParams(normalize=True),
    )  # fmt: skip


def cosine_scores(pairs: list[tuple[str, str]], vectors: dict[str, list[float]]) -> list[float]:
    """Each pair's cosine similarity from its texts' unit embeddings (the dot product)."""
    return [sum(a * b for a, b in zip(vectors[x], vectors[y])) for x, y in pairs]
