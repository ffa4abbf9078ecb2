"""The C decode kernel and the PyTorch fallback against the plain reference backend, in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch

from pagedserve.attention.backend import AttentionMetadata, get_attention_backend
from pagedserve.attention.backends import cpu_kernel


def random_decode_batch(dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks, block_size, kv_heads, q_heads, head_dim = 40, 16, 3, 9, 64
    k_cache = torch.randn(num_blocks, kv_heads, head_dim, block_size, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor([1, 17, 33, 100, 5])
    permutation = torch.randperm(num_blocks, generator=gen).tolist()
    tables, used = [], 0
    for length in seq_lens.tolist():
        blocks = -(-length // block_size)
        tables.append(permutation[used : used + blocks] + [0] * (7 - blocks))
        used += blocks
    q = torch.randn(len(tables), q_heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(len(tables), kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(len(tables), kv_heads, head_dim, generator=gen).to(dtype)
    block_tables = torch.tensor(tables)
    positions = seq_lens - 1
    slots = (
        block_tables[torch.arange(len(tables)), positions // block_size] * block_size + positions % block_size
    )
    metadata = AttentionMetadata(
        slot_mapping=slots,
        num_decode_tokens=len(tables),
        decode_block_tables=block_tables,
        decode_seq_lens=seq_lens,
        decode_max_seq_len=int(seq_lens.max()),
    )
    return q, k, v, k_cache, v_cache, metadata


def test_kernel_builds_here():
    assert cpu_kernel.load() is not None, "a C compiler is on every machine we support; the kernel must build"


@pytest.mark.parametrize("backend", ["cpu", "cpu_torch"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fast_decode_matches_reference(backend: str, dtype: torch.dtype, tolerance: float):
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), metadata, 0.125
    )
    got = get_attention_backend(backend).forward(q, k, v, k_cache, v_cache, metadata, 0.125)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_loading_the_kernel_keeps_subnormal_floats():
    """A shared library linked with -ffast-math would switch on flush-to-zero for the whole process."""
    smallest_normal = 2.2250738585072014e-308
    cpu_kernel.load()
    assert smallest_normal / 2 > 0.0
