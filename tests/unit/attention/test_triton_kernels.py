"""The Triton backend against the reference backend on random paged caches: ragged lengths, block tables with holes
(blocks drawn from a shuffled pool) and shared prefix blocks, GQA ratios 1, 3 and 8, contexts spanning several decode
partitions (split-K), prefill chunks with and without cached context, decodes and prefills in one step, and block
sizes that are not powers of two. On the CPU the kernels run under TRITON_INTERPRET=1 (conftest.py).

Tolerances: float32 1e-4 (IEEE products, a different summation order than the reference's einsum), bfloat16 2e-2
(inputs rounded to 8 bits of mantissa; softmax and sums stay float32 in both)."""

from __future__ import annotations

import random

import pytest
import torch

from pagedserve.attention.backend import get_attention_backend
from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.worker.inputs import prepare_inputs

pytest.importorskip("triton", reason="triton comes with the dev extra (pip install -e '.[dev]')")

from pagedserve.attention.backends import triton_kernels  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def make_step(
    shapes: list[tuple[int, int]],
    block_size: int,
    shared_prefix_blocks: int = 0,
    seed: int = 0,
) -> tuple[list[ScheduledSequence], int]:
    """One step of sequences, each (context_len, new_tokens): block tables from a shuffled pool, and the first
    `shared_prefix_blocks` blocks of every sequence with enough context the same ones (a prefix-cache hit)."""
    rng = random.Random(seed)
    total_blocks = sum(-(-(c + n) // block_size) for c, n in shapes) + 4
    pool = list(range(1, total_blocks + 1))  # block 0 stays unused: padded table entries point there
    rng.shuffle(pool)
    shared = [pool.pop() for _ in range(shared_prefix_blocks)]
    sequences = []
    for i, (context, new) in enumerate(shapes):
        needed = -(-(context + new) // block_size)
        reuse = shared[: min(len(shared), context // block_size)]
        blocks = reuse + [pool.pop() for _ in range(needed - len(reuse))]
        tokens = [rng.randrange(1000) for _ in range(new)]
        sequences.append(ScheduledSequence(f"s{i}", context, tokens, blocks, samples=True))
    return sequences, total_blocks + 1


def run_both(
    shapes, block_size, dtype, device, group=3, kv_heads=2, head_dim=64, shared_prefix_blocks=0, cache_dtype=None,
    seed=0,
):  # fmt: skip
    sequences, num_blocks = make_step(shapes, block_size, shared_prefix_blocks, seed)
    step = prepare_inputs(sequences, block_size, device)
    num_tokens = step.input_ids.shape[0]
    gen = torch.Generator().manual_seed(seed)
    cache_dtype = cache_dtype or dtype

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    q, k, v = rand(num_tokens, kv_heads * group, head_dim), rand(num_tokens, kv_heads, head_dim), None
    v = rand(num_tokens, kv_heads, head_dim)
    # Context K/V: random values already in the cache (what earlier steps or another sequence wrote).
    k_cache = rand(num_blocks, kv_heads, head_dim, block_size).to(cache_dtype)
    v_cache = rand(num_blocks, kv_heads, block_size, head_dim).to(cache_dtype)
    scale = head_dim**-0.5
    ref_k, ref_v = k_cache.clone().cpu(), v_cache.clone().cpu()
    expected = get_attention_backend("torch_ref").forward(
        q.cpu(), k.cpu(), v.cpu(), ref_k, ref_v, _on_cpu(step.metadata), scale
    )
    got = get_attention_backend("triton").forward(q, k, v, k_cache, v_cache, step.metadata, scale)
    return got.cpu(), expected, (k_cache.cpu(), v_cache.cpu()), (ref_k, ref_v)


def _on_cpu(metadata):
    import dataclasses

    fields = {}
    for f in dataclasses.fields(metadata):
        value = getattr(metadata, f.name)
        fields[f.name] = value.cpu() if isinstance(value, torch.Tensor) else value
    fields["prefills"] = [dataclasses.replace(c, block_table=c.block_table.cpu()) for c in metadata.prefills]
    return type(metadata)(**fields)


def assert_close(got, expected, dtype):
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_decode_ragged_lengths_with_holes(dtype, group, test_device):
    # Contexts of 0 to 600 tokens: up to 3 partitions of 256, so the split-K merge combines partials.
    shapes = [(0, 1), (16, 1), (40, 1), (255, 1), (600, 1)]
    got, expected, caches, ref_caches = run_both(shapes, 16, dtype, test_device, group=group)
    assert_close(got, expected, dtype)
    assert torch.equal(caches[0], ref_caches[0]) and torch.equal(caches[1], ref_caches[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_prefill_chunks_with_cached_context(dtype, group, test_device):
    # A fresh prompt, a chunk after a prefix-cache hit, a 100-token chunk after an earlier chunk (two query tiles).
    shapes = [(0, 37), (32, 20), (70, 100)]
    got, expected, *_ = run_both(shapes, 16, dtype, test_device, group=group, shared_prefix_blocks=2)
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("block_size", [16, 12, 32])
def test_mixed_step_any_block_size(block_size, test_device):
    # Decodes first, then prefills, as prepare_inputs orders them; shared prefix blocks between all of them.
    shapes = [(48, 1), (300, 1), (48, 9), (0, 70), (50, 1)]
    got, expected, caches, ref_caches = run_both(
        shapes, block_size, torch.float32, test_device, group=3, shared_prefix_blocks=3
    )
    assert_close(got, expected, torch.float32)
    assert torch.equal(caches[0], ref_caches[0]) and torch.equal(caches[1], ref_caches[1])


def test_float8_cache(test_device):
    # --kv-cache-dtype fp8: writes saturate at +-448 like the reference's cast, reads widen to the model's dtype.
    shapes = [(20, 1), (0, 24)]
    got, expected, caches, ref_caches = run_both(
        shapes, 16, torch.bfloat16, test_device, cache_dtype=torch.float8_e4m3fn
    )
    assert_close(got, expected, torch.bfloat16)
    assert torch.equal(caches[0].view(torch.uint8), ref_caches[0].view(torch.uint8))


def test_bfloat16_cache_under_float32_queries(test_device):
    # --kv-cache-dtype bfloat16 with --dtype float32: writes round as the reference's cast, reads widen exactly.
    shapes = [(20, 1), (40, 1), (0, 24), (16, 9)]
    got, expected, caches, ref_caches = run_both(
        shapes, 16, torch.float32, test_device, cache_dtype=torch.bfloat16
    )
    assert got.dtype == torch.float32
    assert_close(got, expected, torch.float32)
    assert torch.equal(caches[0], ref_caches[0]) and torch.equal(caches[1], ref_caches[1])


def test_padded_decode_rows_are_skipped(test_device):
    """A CUDA graph replays a bucket larger than the batch: padded rows have slot -1 (nothing written) and
    seq_len 0 (output 0), and the real rows are unaffected."""
    gen = torch.Generator().manual_seed(1)
    kv_heads, group, head_dim, block_size, num_blocks = 2, 4, 64, 16, 8
    k_cache = torch.randn(num_blocks, kv_heads, head_dim, block_size, generator=gen).to(test_device)
    v_cache = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=gen).to(test_device)
    before = k_cache.clone()
    k = torch.randn(2, kv_heads, head_dim, generator=gen).to(test_device)
    triton_kernels.write_kv(k, k, k_cache, v_cache, torch.tensor([-1, -1], device=test_device))
    assert torch.equal(k_cache, before)
    q = torch.randn(3, kv_heads * group, head_dim, generator=gen).to(test_device)
    tables = torch.tensor([[3, 5], [0, 0], [0, 0]], device=test_device)
    lens = torch.tensor([20, 0, 0], device=test_device)
    out = torch.full_like(q, float("nan"))
    splits = triton_kernels.num_decode_splits(4096, block_size)  # a graph captured for 4096 tokens
    triton_kernels.decode_attention(q, k_cache, v_cache, tables, lens, 0.125, splits, out)
    assert torch.equal(out[1:].cpu(), torch.zeros_like(out[1:]).cpu())
    alone = torch.empty_like(q[:1])
    triton_kernels.decode_attention(q[:1], k_cache, v_cache, tables[:1], lens[:1], 0.125, 1, alone)
    torch.testing.assert_close(out[:1], alone, atol=1e-5, rtol=1e-5)
