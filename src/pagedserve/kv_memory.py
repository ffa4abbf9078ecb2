"""KV-cache memory arithmetic, one copy for the engine's startup accounting and `pagedserve plan`: the bytes a
token holds, the tokens a max-length sequence takes in whole blocks, and how many such sequences a pool holds.
Plain integers in and out (no torch), so the planner imports it without the engine."""

from __future__ import annotations

import math


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """K and V of every layer: 2 x layers x KV heads x head dim x bytes per element."""
    return 2 * num_layers * num_kv_heads * head_dim * element_bytes


def sequence_tokens(max_model_len: int, block_size: int) -> int:
    """Tokens one max-length sequence occupies, rounded up to whole KV blocks."""
    return math.ceil(max_model_len / block_size) * block_size


def max_concurrency(kv_tokens: int, max_model_len: int, block_size: int) -> int:
    """Max-length sequences a pool of kv_tokens holds at once (each in whole blocks)."""
    return kv_tokens // sequence_tokens(max_model_len, block_size)
