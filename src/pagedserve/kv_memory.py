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
