"""Requests of a pooling model (embeddings, scores, classes), offline and over HTTP: their sampling parameters, text
pairs as vLLM pairs them for /score, /rerank and LLM.score, each pair as a cross-encoder's prompt, and the cosine
rule of an embedding model's scores."""

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


def pooling_request(pooling: PoolingParams, truncate_prompt_tokens: int | None = None) -> SamplingParams:
    """An embedding, score or classification request: its prompt runs once and the request ends on length (max_tokens
    1, ignore_eos: its one token is the runner's placeholder, never an EOS)."""
    return SamplingParams(
        max_tokens=1, temperature=0.0, detokenize=False, ignore_eos=True, truncate_prompt_tokens=truncate_prompt_tokens,
        pooling=pooling,
    )  # fmt: skip


def cosine_scores(pairs: list[tuple[str, str]], vectors: dict[str, list[float]]) -> list[float]:
    """Each pair's cosine similarity from its texts' unit embeddings (the dot product)."""
    return [sum(a * b for a, b in zip(vectors[x], vectors[y])) for x, y in pairs]
