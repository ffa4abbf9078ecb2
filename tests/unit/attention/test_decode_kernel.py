"""The C decode kernel and the PyTorch fallback against the plain reference backend, in float32 and bfloat16, at
every ISA level this machine supports (the `isa_level` fixture)."""

from __future__ import annotations

import pytest
import torch

from pagedserve.attention.backend import AttentionMetadata, get_attention_backend
from pagedserve.ops import build as cpu_kernel
from pagedserve.ops import cpu as cpu_ops

pytestmark = pytest.mark.usefixtures("isa_level")


def random_decode_batch(
    dtype: torch.dtype, seed: int = 0, kv_heads: int = 3, group: int = 3, head_dim: int = 64
):
    gen = torch.Generator().manual_seed(seed)
    num_blocks, block_size, q_heads = 40, 16, kv_heads * group
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


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("group,head_dim", [(1, 64), (3, 64), (4, 128), (7, 64), (8, 32), (9, 64), (2, 48)])
def test_kernel_across_group_sizes_and_head_dims(group: int, head_dim: int, dtype, tolerance):
    """The SIMD levels have a register-blocked path per group size up to 8; 9 heads per group and odd head dims
    take the generic one."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 1, 2, group, head_dim)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), metadata, head_dim**-0.5
    )
    got = get_attention_backend("cpu").forward(q, k, v, k_cache, v_cache, metadata, head_dim**-0.5)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_loading_the_kernel_keeps_subnormal_floats():
    """A shared library linked with -ffast-math would switch on flush-to-zero for the whole process."""
    smallest_normal = 2.2250738585072014e-308
    cpu_kernel.load()
    assert smallest_normal / 2 > 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_reads_queries_from_a_strided_view(dtype):
    """The model hands q as a view into the merged qkv projection: rows further apart than q_heads * head_dim."""
    q, _, _, k_cache, v_cache, metadata = random_decode_batch(dtype)
    batch, heads, head_dim = q.shape
    wide = torch.zeros(batch, (heads + 6) * head_dim, dtype=dtype)
    wide[:, : heads * head_dim] = q.reshape(batch, -1)
    view = wide[:, : heads * head_dim].view(batch, heads, head_dim)
    args = (k_cache, v_cache, metadata.decode_block_tables, metadata.decode_seq_lens, 0.125)
    assert torch.equal(
        cpu_ops.paged_decode_attention(view, *args), cpu_ops.paged_decode_attention(q.contiguous(), *args)
    )


def test_kernel_rejects_a_length_beyond_the_block_table():
    q, _, _, k_cache, v_cache, metadata = random_decode_batch(torch.float32)
    too_long = metadata.decode_seq_lens.clone()
    too_long[0] = metadata.decode_block_tables.shape[1] * 16 + 1
    with pytest.raises(ValueError, match="length"):
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, metadata.decode_block_tables, too_long, 0.125)
