"""The engine's startup accounting and `pagedserve plan` count KV memory with the same arithmetic (kv_memory.py):
on the bundled model, the bytes of a block the engine allocates equal the planner's bytes per token times the
block size, and the maximum concurrency the engine logs is the planner's formula."""

from __future__ import annotations

import pytest
import torch

from pagedserve import kv_memory
from pagedserve.kube.model_spec import spec_from_gguf
from pagedserve.kube.planner import kv_bytes_per_token
from pagedserve.models.loader import resolve_model_source
from pagedserve.worker.kv_cache import kv_bytes_per_block


def test_engine_and_planner_count_kv_bytes_alike() -> None:
    source = resolve_model_source(None)
    spec = spec_from_gguf(source.path)
    for dtype, element in ((torch.bfloat16, 2), (torch.float32, 4), (torch.float8_e4m3fn, 1)):
        assert kv_bytes_per_block(source.hf_config, 16, dtype) == 16 * kv_bytes_per_token(spec, element)
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x K and V x 2 bytes
    assert kv_bytes_per_token(spec, 2) == 2 * 30 * 3 * 64 * 2


def test_max_concurrency_counts_whole_blocks() -> None:
    assert kv_memory.sequence_tokens(2048, 16) == 2048
    assert kv_memory.sequence_tokens(2049, 16) == 2064
    assert kv_memory.max_concurrency(4128, 2049, 16) == 2
    assert kv_memory.max_concurrency(4127, 2049, 16) == 1
    assert kv_memory.max_concurrency(100, 2048, 16) == 0


def test_gpu_kv_budget_is_utilization_less_weights_activations_and_others() -> None:
    gib = kv_memory.GIB
    budget = kv_memory.gpu_kv_cache_bytes(80 * gib, 0.9, 16 * gib, 2 * gib, gib)
    assert budget == int(80 * gib * 0.9) - 19 * gib


def test_gpu_kv_budget_refuses_to_start_with_nothing_left() -> None:
    gib = kv_memory.GIB
    with pytest.raises(ValueError, match=r"no GPU memory left for the KV cache.*weights take 70\.00 GiB"):
        kv_memory.gpu_kv_cache_bytes(80 * gib, 0.9, 70 * gib, 2 * gib, gib)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        kv_memory.gpu_kv_cache_bytes(80 * gib, 1.5, gib, gib, 0)
