"""Sizing and allocating the paged KV cache: one preallocated [num_blocks, block_size, Hkv, D] pool per layer."""

from __future__ import annotations

import logging
from typing import Any

import torch

from pagedserve import envs
from pagedserve.config import CacheConfig
from pagedserve.kv_memory import KVCacheGroup, kv_bytes_per_token

logger = logging.getLogger("pagedserve")

DEFAULT_CPU_KV_BYTES = 4 * 1024**3


# --kv-cache-dtype values (CacheConfig.kv_cache_dtype) other than auto, as the torch dtype the cache holds.
KV_CACHE_DTYPES = {"bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}


def resolve_kv_cache_dtype(
    kv_cache_dtype: str, model_dtype: torch.dtype, weight_dtype: torch.dtype | None = None
) -> torch.dtype:
    """The cache's storage dtype; ValueError naming the field for what is not run. auto: the model's dtype, which
    is its matrices' (`weight_dtype`) where those are bfloat16 under float32 compute (ModelDtypes: GGUF / AWQ / GPTQ
    blocks on a CPU, 16-bit checkpoints on CPUs without bfloat16 instructions), as vLLM's auto gives those models a
    bfloat16 cache: half the bytes decode attention reads and twice the tokens in a budget, the C kernels widening
    each value exactly (docs/architecture.md, "A bfloat16 KV cache under float32 compute")."""
    if kv_cache_dtype == "auto":
        if model_dtype == torch.float32 and weight_dtype == torch.bfloat16:
            return torch.bfloat16
        return model_dtype
    if kv_cache_dtype in KV_CACHE_DTYPES:
        return KV_CACHE_DTYPES[kv_cache_dtype]
    raise ValueError(
        f"kv_cache_dtype {kv_cache_dtype!r} is not supported; supported: auto, {', '.join(KV_CACHE_DTYPES)}"
    )


def kv_bytes_per_block(
    hf_config: Any,
    block_size: int,
    dtype: torch.dtype,
    num_kv_heads: int | None = None,
    num_layers: int | None = None,
) -> int:
    """num_kv_heads: the heads this rank's cache holds (all of the model's without tensor parallelism). num_layers:
    the cache tensors a block spans (every layer's by default; a hybrid model's group slots)."""
    num_heads = hf_config.num_attention_heads
    num_kv_heads = num_kv_heads or getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    element = torch.tensor([], dtype=dtype).element_size()
    layers = num_layers or hf_config.num_hidden_layers
    return block_size * kv_bytes_per_token(layers, num_kv_heads, head_dim, element)


def kv_cache_budget_bytes(cache: CacheConfig, device: torch.device, allocated: bool = True) -> int:
    """kv_cache_memory_bytes when given; on the CPU VLLM_CPU_KVCACHE_SPACE, else 4 GiB. `allocated` False (an
    encoder's blocks, which only count the tokens in flight): 4 GiB's worth on any device."""
    if cache.kv_cache_memory_bytes is not None:
        if cache.kv_cache_memory_bytes <= 0:
            raise ValueError("kv_cache_memory_bytes must be > 0")
        return cache.kv_cache_memory_bytes
    if not allocated:
        return DEFAULT_CPU_KV_BYTES
    if device.type == "cuda":
        raise ValueError(
            "on CUDA the KV budget comes from profiling (worker/gpu_memory.py), not this function"
        )
    from_env = envs.cpu_kv_cache_bytes()
    return DEFAULT_CPU_KV_BYTES if from_env is None else from_env


def allocate_kv_caches(
    hf_config: Any,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    num_kv_heads: int | None = None,
    num_layers: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (K, V) pair per layer, or `num_layers` pairs (a hybrid model's group slots, which layers share)."""
    num_heads = hf_config.num_attention_heads
    num_kv_heads = num_kv_heads or getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    # Keys transposed within a block, values as rows, both grouped by kv head: see attention/backend.py.
    key_shape = (num_blocks, num_kv_heads, head_dim, block_size)
    value_shape = (num_blocks, num_kv_heads, block_size, head_dim)
    # zeros, not empty: a padded decode slot must never hold NaN/Inf bits (masked scores still multiply V).
    return [
        (
            torch.zeros(key_shape, dtype=dtype, device=device),
            torch.zeros(value_shape, dtype=dtype, device=device),
        )
        for _ in range(num_layers or hf_config.num_hidden_layers)
    ]


def layer_kv_caches(
    slot_caches: list[tuple[torch.Tensor, torch.Tensor]], groups: list[KVCacheGroup]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int] | None]:
    """Each layer's (K, V): the slot its place in its KV cache group names (kv_memory.py); and each layer's group
    where there are several (None: one group, every layer its own slot)."""
    place = {layer: (g, slot) for g, group in enumerate(groups) for slot, layer in enumerate(group.layers)}
    layers = range(len(place))
    caches = [slot_caches[place[i][1]] for i in layers]
    return caches, [place[i][0] for i in layers] if len(groups) > 1 else None
