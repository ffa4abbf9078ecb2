"""CUDA-graph bucketing and static buffers, checked on the CPU: a decode step copied into a bucket's buffers and run
the way the graph was captured (padded rows, the split-K grid of max_model_len) gives the eager step's logits and
leaves the KV cache as the eager step does. The capture itself needs a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from pagedserve.attention.backend import get_attention_backend
from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.models.registry import resolve_model_class
from pagedserve.worker.cuda_graph import CudaDecodeGraphs, bucket_for, capture_sizes
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import allocate_kv_caches

pytest.importorskip("triton", reason="triton comes with the dev extra (pip install -e '.[dev]')")


def test_capture_sizes_are_vllms_buckets():
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 4]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 24]
    assert capture_sizes(256)[-3:] == [240, 248, 256]
    assert capture_sizes(10_000)[-1] == 512
    with pytest.raises(ValueError, match="max_num_seqs"):
        capture_sizes(0)


def test_bucket_for_picks_the_smallest_that_holds_the_batch():
    sizes = capture_sizes(256)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 5, 8, 9, 255, 256)] == [1, 2, 4, 8, 8, 16, 256, 256]
    assert bucket_for(257, sizes) is None


def tiny_model(device: torch.device):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = resolve_model_class(config)(config, get_attention_backend("triton")).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.ones_like(param) if "norm" in name else torch.randn_like(param) * 0.1)
    return config, model


def test_padded_replay_matches_eager_step(test_device):
    config, model = tiny_model(test_device)
    block_size, max_model_len = 8, 256
    caches = allocate_kv_caches(config, 40, block_size, torch.float32, test_device)
    # Three sequences with 5, 19 and 40 tokens of context already cached (random K/V written earlier).
    gen = torch.Generator().manual_seed(3)
    for k_cache, v_cache in caches:
        k_cache.copy_(torch.randn(k_cache.shape, generator=gen))
        v_cache.copy_(torch.randn(v_cache.shape, generator=gen))
    tables = [[7, 3], [12, 1, 30], [2, 5, 9, 11, 20, 22]]
    contexts = [5, 19, 40]
    step = prepare_inputs(
        [ScheduledSequence(f"s{i}", c, [11 + i], t, True) for i, (c, t) in enumerate(zip(contexts, tables))],
        block_size, test_device,
    )  # fmt: skip
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    with torch.inference_mode():
        eager = model.compute_logits(model(step.input_ids, step.positions, eager_caches, step.metadata))
        graphs = CudaDecodeGraphs(model, caches, max_num_seqs=8, max_model_len=max_model_len,
                                  block_size=block_size, device=test_device)  # fmt: skip
        size = bucket_for(3, graphs.sizes)
        assert size == 4
        graphs.buffers.block_tables.fill_(39)  # stale ids from an earlier, wider step must not matter
        graphs.buffers.fill(step.input_ids, step.positions, step.metadata, size)
        replayed = graphs.run(size)  # what the graph of bucket 4 computes at replay
    assert replayed.shape[0] == 4
    torch.testing.assert_close(replayed[:3], eager, atol=1e-5, rtol=1e-5)
    for (k, v), (ek, ev) in zip(caches, eager_caches):
        assert torch.equal(k, ek) and torch.equal(v, ev), "the padded row wrote into the cache"
    assert graphs.buffers.slot_mapping[3].item() == -1 and graphs.buffers.seq_lens[3].item() == 0


def test_padded_replay_keeps_each_kv_cache_groups_tables(test_device):
    """A hybrid model (kv_memory.kv_cache_groups): layer 1 reads group 1's own tables and slots, layer 0 group 0's;
    the static buffers keep a slot mapping and tables per group, and replay computes what eager does."""
    config, model = tiny_model(test_device)
    block_size = 8
    caches = allocate_kv_caches(config, 40, block_size, torch.float32, test_device)
    gen = torch.Generator().manual_seed(5)
    for k_cache, v_cache in caches:
        k_cache.copy_(torch.randn(k_cache.shape, generator=gen))
        v_cache.copy_(torch.randn(v_cache.shape, generator=gen))
    tables = [[7, 3], [12, 1, 30]]
    group_tables = [[[33, 34]], [[35, 36, 37]]]  # the same positions, other blocks
    contexts = [5, 19]
    sequences = [
        ScheduledSequence(f"s{i}", c, [11 + i], t, True, group_block_ids=g)
        for i, (c, t, g) in enumerate(zip(contexts, tables, group_tables))
    ]
    step = prepare_inputs(sequences, block_size, test_device, layer_groups=[0, 1])
    assert step.metadata.for_layer(1).slot_mapping.tolist() == [33 * 8 + 5, 37 * 8 + 3]
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    with torch.inference_mode():
        eager = model.compute_logits(model(step.input_ids, step.positions, eager_caches, step.metadata))
        graphs = CudaDecodeGraphs(model, caches, max_num_seqs=4, max_model_len=64, block_size=block_size,
                                  device=test_device, layer_groups=[0, 1])  # fmt: skip
        graphs.buffers.fill(step.input_ids, step.positions, step.metadata, 4)
        replayed = graphs.run(4)
    torch.testing.assert_close(replayed[:2], eager, atol=1e-5, rtol=1e-5)
    for (k, v), (ek, ev) in zip(caches, eager_caches):
        assert torch.equal(k, ek) and torch.equal(v, ev), "a padded row wrote into the cache"
    assert [slots[2:].tolist() for slots in graphs.buffers.group_slots] == [[-1, -1], [-1, -1]]
    # Without group 1's tables the layer would have read other keys: the groups really differ.
    with torch.inference_mode():
        plain = prepare_inputs(
            [dataclasses.replace(s, group_block_ids=[]) for s in sequences], 8, test_device
        )
        other = model.compute_logits(model(plain.input_ids, plain.positions, eager_caches, plain.metadata))
    assert not torch.allclose(other, eager, atol=1e-3)


def test_graphs_step_aside_for_prefills_and_large_batches(test_device):
    config, model = tiny_model(test_device)
    caches = allocate_kv_caches(config, 8, 8, torch.float32, test_device)
    graphs = CudaDecodeGraphs(
        model, caches, max_num_seqs=2, max_model_len=64, block_size=8, device=test_device
    )
    graphs.graphs = {1: None, 2: None}  # nothing captured on the CPU; only the routing is checked
    prefill = prepare_inputs([ScheduledSequence("p", 0, [1, 2, 3], [0], True)], 8, test_device)
    assert graphs.logits(prefill.input_ids, prefill.positions, prefill.metadata) is None
    three = prepare_inputs([ScheduledSequence(f"d{i}", 2, [5], [i], True) for i in range(3)], 8, test_device)
    assert graphs.logits(three.input_ids, three.positions, three.metadata) is None


def test_cuda_path_imports_without_a_gpu():
    """The CUDA modules import (Triton kernels decorated for compilation, not interpreted) where no GPU exists."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"CUDA_VISIBLE_DEVICES": ""}
    modules = "pagedserve.attention.backends.triton_attn, pagedserve.worker.cuda_graph, pagedserve.worker.gpu_memory"
    result = subprocess.run(
        [sys.executable, "-c", f"import torch, {modules}; assert not torch.cuda.is_available()"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
