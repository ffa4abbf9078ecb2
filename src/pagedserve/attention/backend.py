"""Attention over the paged KV cache: the metadata a step needs and the backend interface.

Cache layouts, per layer: keys `[num_blocks, kv_heads, head_dim, block_size]` (transposed within a block, so a
block's scores are one vector operation per dimension) and values `[num_blocks, kv_heads, block_size, head_dim]`:
one (block, kv head) of either is one contiguous chunk that the decode kernel streams. `key_rows(k_cache)` and
`value_rows(v_cache)` are `[num_blocks, block_size, kv_heads, head_dim]` views for row-wise access.

Token order in a step: decode tokens first (one per decoding sequence), then prefill chunks, each contiguous.
Every layer first writes the K/V of all of the step's tokens into the cache (via `slot_mapping`), then computes
attention reading the cache. Writing before reading is what lets sibling sequences of one request (n > 1) hit
prompt blocks computed in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class PrefillChunk:
    token_start: int  # first row of this chunk in the step's token dimension
    num_tokens: int  # tokens computed this step
    context_len: int  # tokens already in the cache before this chunk (prefix-cache hit or earlier chunks)
    block_table: torch.Tensor  # [num_blocks] int64, the sequence's blocks covering context_len + num_tokens


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot (block_id * block_size + offset) of each token
    num_decode_tokens: int = 0
    decode_block_tables: torch.Tensor | None = None  # [B_decode, max_blocks] int64, padded with 0
    decode_seq_lens: torch.Tensor | None = None  # [B_decode] int64: tokens in cache incl. the new one
    decode_max_seq_len: int = 0
    prefills: list[PrefillChunk] = field(default_factory=list)
    # The prefills again as a packed batch, for kernels that take them all in one launch (the Triton backend).
    prefill_query_starts: torch.Tensor | None = None  # [P] int64: each chunk's token_start
    prefill_query_lens: torch.Tensor | None = None  # [P] int64: each chunk's num_tokens
    prefill_context_lens: torch.Tensor | None = None  # [P] int64: each chunk's context_len
    prefill_block_tables: torch.Tensor | None = None  # [P, max_blocks] int64, padded with 0
    prefill_max_query_len: int = 0
    # Hybrid models (kv_memory.py): each layer's KV cache group, and groups 1, 2, ...'s own metadata
    # (their slot mappings and block tables; the rest is this one's). None: every layer reads this metadata.
    layer_groups: list[int] | None = None
    group_metadata: list[AttentionMetadata] = field(default_factory=list)

    def for_layer(self, layer_index: int) -> AttentionMetadata:
        """The metadata layer `layer_index` attends with: its KV cache group's block tables."""
        if self.layer_groups is None:
            return self
        group = self.layer_groups[layer_index]
        return self if group == 0 else self.group_metadata[group - 1]


class AttentionBackend(Protocol):
    name: str

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, Hkv, D, block_size]
        v_cache: torch.Tensor,  # [num_blocks, Hkv, block_size, D]
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,  # a query sees only its last this many keys (itself included)
        softcap: float | None = None,  # scores become softcap * tanh(score / softcap) (Gemma 2)
    ) -> torch.Tensor:  # [T, Hq, D]
        ...


def soft_cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's attention logit soft-capping: softcap * tanh(scores / softcap); scores as they are without it."""
    return scores if not softcap else torch.tanh(scores / softcap) * softcap


def key_rows(k_cache: torch.Tensor) -> torch.Tensor:
    """[num_blocks, Hkv, D, block_size] keys as a [num_blocks, block_size, Hkv, D] view (no copy)."""
    return k_cache.permute(0, 3, 1, 2)


def value_rows(v_cache: torch.Tensor) -> torch.Tensor:
    """[num_blocks, Hkv, block_size, D] values as a [num_blocks, block_size, Hkv, D] view (no copy)."""
    return v_cache.permute(0, 2, 1, 3)


# Largest finite float8 e4m3fn value. Writes saturate there: PyTorch's cast turns anything larger into NaN.
FP8_E4M3_MAX = 448.0


def to_cache_dtype(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """K or V as the cache stores them. A float8 cache (--kv-cache-dtype fp8) holds e4m3 values with a scale of
    1, as vLLM's does without calibrated scales, saturated at +-448; a bfloat16 one under float32 activations
    their nearest bfloat16."""
    if cache.dtype == torch.float8_e4m3fn:
        return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(cache.dtype)
    return x.to(cache.dtype)


def as_stored(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """x rounded as the cache would store it, in x's dtype (itself when the cache is in x's dtype)."""
    return to_cache_dtype(x, cache).to(x.dtype) if cache.dtype != x.dtype else x


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    block_size = v_cache.shape[2]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    key_rows(k_cache)[blocks, offsets] = to_cache_dtype(k, k_cache)
    value_rows(v_cache)[blocks, offsets] = to_cache_dtype(v, v_cache)


def window_start(context_len: int, sliding_window: int | None) -> int:
    """The first key a chunk whose first query sits at `context_len` can see: 0 without a window."""
    return max(0, context_len - sliding_window + 1) if sliding_window else 0


def causal_mask(
    num_queries: int, num_keys: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor:
    """[num_queries, num_keys] bool, True where query i (at key position num_keys - num_queries + i) sees a key:
    every earlier key and itself, or only its last `sliding_window` keys (transformers' `kv > q - window`)."""
    offset = num_keys - num_queries
    mask = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)
    if sliding_window:
        mask &= torch.ones_like(mask).triu(diagonal=offset - sliding_window + 1)
    return mask


def gather_sequence_kv(
    cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int
) -> torch.Tensor:  # [num_tokens, Hkv, D]
    """A sequence's first `num_tokens` keys or values, in token order; pass `key_rows(...)` / `value_rows(...)`."""
    block_size = cache.shape[1]
    num_blocks = -(-num_tokens // block_size)
    return cache[block_table[:num_blocks]].flatten(0, 1)[:num_tokens]


def get_attention_backend(name: str) -> AttentionBackend:
    if name == "torch_ref":
        from pagedserve.attention.backends.torch_ref import TorchReferenceBackend

        return TorchReferenceBackend()
    if name == "cpu":
        from pagedserve.attention.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "triton":
        from pagedserve.attention.backends.triton_attn import TritonBackend

        return TritonBackend()
    if name == "cpu_torch":  # the fast backend without its C kernel (what runs where no compiler exists)
        from pagedserve.attention.backends.cpu import CpuBackend

        return CpuBackend(use_kernel=False)
    raise ValueError(f"unknown attention backend {name!r} (torch_ref, cpu, cpu_torch, triton)")


def default_attention_backend(device: torch.device) -> str:
    """The backend a device runs: the C/PyTorch one on the CPU, the Triton kernels on CUDA."""
    return "triton" if device.type == "cuda" else "cpu"
