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


@pytest.mark.parametrize("layers", [26, 62])
def test_engine_and_planner_group_gemma3_alike(layers: int) -> None:
    """Gemma 3's config as transformers reads it (the engine: models/llama.py::attention_window) and as the planner
    reads the config.json: the same windows, so the same KV cache groups, block bytes and max-length blocks."""
    import transformers

    from pagedserve.kube.model_spec import spec_from_config
    from pagedserve.kube.planner import PlanRequest, kv_groups, sequence_pool_tokens
    from pagedserve.models.llama import attention_window

    config = transformers.Gemma3TextConfig(
        num_hidden_layers=layers,
        sliding_window=1024,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
    )
    engine_windows = [attention_window(config, i) for i in range(layers)]
    spec = spec_from_config(config.to_dict(), "gemma3")
    assert list(spec.layer_windows) == engine_windows
    groups = kv_memory.kv_cache_groups(engine_windows)
    assert kv_groups(spec) == groups
    slots = kv_memory.group_slots(groups)
    assert kv_bytes_per_block(config, 16, torch.bfloat16, num_layers=slots) == 16 * kv_bytes_per_token(
        spec, 2
    )
    windows = [g.sliding_window for g in groups]
    request = PlanRequest(block_size=16, max_num_batched_tokens=2048)
    engine_blocks = kv_memory.sequence_blocks(32768, 16, windows, 2048)
    assert sequence_pool_tokens(spec, 32768, request) == 16 * engine_blocks
