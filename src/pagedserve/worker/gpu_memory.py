"""Sizing the KV cache on a GPU: profile the largest step's activations with a dummy forward, then give the KV pool
what --gpu-memory-utilization leaves (kv_memory.gpu_kv_cache_bytes does the arithmetic)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.kv_memory import GIB, gpu_kv_cache_bytes
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import allocate_kv_caches

logger = logging.getLogger("pagedserve")


@torch.inference_mode()
def profile_activation_bytes(
    model: Any,
    hf_config: Any,
    num_tokens: int,
    num_seqs: int,
    block_size: int,
    cache_dtype: torch.dtype,
    num_kv_heads: int,
    device: torch.device,
) -> int:
    """Peak memory of one forward over `num_tokens` prompt tokens spread over `num_seqs` sequences (the scheduler's
    largest step), with their logits in float32 as the sampler takes them, beyond what was allocated before it.
    A scratch cache just big enough is allocated first and is not counted."""
    num_seqs = max(1, min(num_seqs, num_tokens))
    lengths = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
    sequences, next_block = [], 0
    for i, length in enumerate(lengths):
        blocks = -(-length // block_size)
        block_ids = list(range(next_block, next_block + blocks))
        next_block += blocks
        sequences.append(ScheduledSequence(f"profile-{i}", 0, [0] * length, block_ids, samples=True))
    caches = allocate_kv_caches(hf_config, next_block, block_size, cache_dtype, device, num_kv_heads)
    step = prepare_inputs(sequences, block_size, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    hidden = model(step.input_ids, step.positions, caches, step.metadata)
    # A classifier's head is a few rows; a language model's logits are the step's largest tensor.
    head = model.classify if getattr(model, "is_classifier", False) else model.compute_logits
    logits = head(hidden[step.last_token_rows]).float()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del hidden, logits, caches, step
    torch.cuda.empty_cache()
    return peak


def gpu_kv_budget(
    model: Any,
    hf_config: Any,
    utilization: float,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    block_size: int,
    cache_dtype: torch.dtype,
    num_kv_heads: int,
    device: torch.device,
) -> int:
    """KV pool bytes for this process's GPU, after the weights are loaded."""
    weight_bytes = torch.cuda.memory_allocated(device)
    activation_bytes = profile_activation_bytes(
        model, hf_config, max_num_batched_tokens, max_num_seqs, block_size, cache_dtype, num_kv_heads, device
    )
    free, total = torch.cuda.mem_get_info(device)
    other_bytes = max(0, total - free - torch.cuda.memory_reserved(device))
    budget = gpu_kv_cache_bytes(total, utilization, weight_bytes, activation_bytes, other_bytes)
    logger.info(
        "GPU memory: %.1f GiB x %.2f; weights %.2f GiB, peak activations %.2f GiB (%d tokens), outside PyTorch "
        "%.2f GiB: %.2f GiB for the KV cache",
        total / GIB, utilization, weight_bytes / GIB, activation_bytes / GIB, max_num_batched_tokens,
        other_bytes / GIB, budget / GIB,
    )  # fmt: skip
    return budget
