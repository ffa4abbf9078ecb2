"""KV-cache memory arithmetic, one copy for the engine's startup accounting and `pagedserve plan`: the bytes a
token holds, the tokens a max-length sequence takes in whole blocks, how many such sequences a pool holds, and the
KV cache groups of a model with sliding-window layers. Plain integers in and out (no torch), so the planner imports
it without the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """K and V of every layer: 2 x layers x KV heads x head dim x bytes per element."""
    return 2 * num_layers * num_kv_heads * head_dim * element_bytes


def sequence_tokens(max_model_len: int, block_size: int) -> int:
    """Tokens one max-length sequence occupies, rounded up to whole KV blocks."""
    return math.ceil(max_model_len / block_size) * block_size


def max_concurrency(kv_tokens: int, max_model_len: int, block_size: int) -> int:
    """Max-length sequences a pool of kv_tokens holds at once (each in whole blocks)."""
    return kv_tokens // sequence_tokens(max_model_len, block_size)


GIB = 1024**3


def gpu_kv_cache_bytes(
    total_bytes: int, utilization: float, weight_bytes: int, activation_bytes: int, other_bytes: int
) -> int:
    """The KV pool on a GPU: --gpu-memory-utilization x total, less the weights, the peak activations of the largest
    step (profiled) and memory that is not this process's PyTorch allocations (CUDA context, NCCL buffers, other
    processes on the card). ValueError with the whole account when nothing is left."""
    if not 0 < utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    allowed = int(total_bytes * utilization)
    budget = allowed - weight_bytes - activation_bytes - other_bytes
    if budget <= 0:
        raise ValueError(
            f"no GPU memory left for the KV cache: gpu_memory_utilization {utilization} x {total_bytes / GIB:.1f} GiB "
            f"= {allowed / GIB:.2f} GiB, of which weights take {weight_bytes / GIB:.2f} GiB, activations of the "
            f"largest step {activation_bytes / GIB:.2f} GiB and memory outside PyTorch {other_bytes / GIB:.2f} GiB; "
            "raise --gpu-memory-utilization, lower --max-num-batched-tokens or --max-num-seqs, or shard the model "
            "(--tensor-parallel-size) or quantize it"
        )
    return budget


# ---- KV cache groups (vLLM V1's hybrid allocator) ---------------------------------------------------------------
# Layers of one attention kind share a block table, and every group's blocks come from one pool. A model whose
# layers all attend to their whole context is one group. Where some layers only see a sliding window (Gemma 2 and
# 3, Mistral v0.1, Phi-3-mini-4k), a window layer's blocks that fell out of every future query's window go back to
# the pool while its sequence runs (core/kv_cache_manager.py): at long contexts such a layer holds a window's worth
# of blocks, not the whole sequence's. Groups hold equally many layers (vLLM's uniform page size), so a block of the
# one pool is the same bytes in every group: layer `i` of every group shares cache tensor slot `i`, each group
# writing only the blocks its own table holds.


@dataclass(frozen=True)
class KVCacheGroup:
    sliding_window: int | None
    """The window of every layer in the group (None: full attention, every block kept)."""
    layers: tuple[int, ...]
    """The model's layer indices in the group; the i-th one stores its K/V in cache tensor slot i."""


def kv_cache_groups(layer_windows: list[int | None], hybrid: bool = True) -> list[KVCacheGroup]:
    """Groups for layers with these windows (None: full attention). Without `hybrid` (vLLM's
    --disable-hybrid-kv-cache-manager) or with no window, one full-attention group keeps every block. Otherwise
    layers are split by window into groups of `size` layers: the fewest layers of one kind, or the most when that
    is under 1.25x the fewest (vLLM's rule, fewer padded slots); full-attention groups first, then by window."""
    if not layer_windows:
        raise ValueError("a model has at least one layer")
    kinds: dict[int | None, list[int]] = {}
    for index, window in enumerate(layer_windows):
        kinds.setdefault(window, []).append(index)
    if not hybrid or set(kinds) == {None}:
        return [KVCacheGroup(None, tuple(range(len(layer_windows))))]
    fewest = min(len(layers) for layers in kinds.values())
    most = max(len(layers) for layers in kinds.values())
    size = most if most < 1.25 * fewest else fewest
    order = sorted(kinds, key=lambda w: (w is not None, w or 0))
    return [
        KVCacheGroup(window, tuple(kinds[window][start : start + size]))
        for window in order
        for start in range(0, len(kinds[window]), size)
    ]


def group_slots(groups: list[KVCacheGroup]) -> int:
    """Cache tensors the groups need: one per layer of the largest group."""
    return max(len(group.layers) for group in groups)


def window_blocks(sliding_window: int, block_size: int) -> int:
    """Blocks before a query's own that its window can reach: the last `sliding_window - 1` keys' blocks (vLLM's
    contiguous-blocks count for a sliding-window prefix-cache hit)."""
    return math.ceil((sliding_window - 1) / block_size)


def sequence_blocks(
    num_tokens: int, block_size: int, windows: list[int | None], max_num_batched_tokens: int
) -> int:
    """Blocks of the pool one sequence of `num_tokens` holds at most, over all groups: every block of a full group;
    for a window group its window plus the longest chunk a step adds, and one block of alignment (vLLM's
    SlidingWindowSpec.max_memory_usage_bytes)."""
    total = 0
    whole = math.ceil(num_tokens / block_size)
    for window in windows:
        if window is None:
            total += whole
        else:
            reach = min(window - 1 + max_num_batched_tokens, num_tokens)
            total += min(whole, math.ceil(reach / block_size) + 1)
    return total
