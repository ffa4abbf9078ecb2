"""The C decode kernel and the PyTorch fallback against the plain reference backend, in float32 and bfloat16, with
caches in the same dtype, in float8 e4m3 (--kv-cache-dtype fp8) or in bfloat16 under float32 queries, at every ISA
level this machine supports (the `isa_level` fixture)."""

from __future__ import annotations

import pytest
import torch

from pagedserve.attention.backend import AttentionMetadata, get_attention_backend, to_cache_dtype
from pagedserve.ops import build as cpu_kernel
from pagedserve.ops import cpu as cpu_ops

pytestmark = pytest.mark.usefixtures("isa_level")


def random_decode_batch(
    dtype: torch.dtype,
    seed: int = 0,
    kv_heads: int = 3,
    group: int = 3,
    head_dim: int = 64,
    lengths: tuple[int, ...] = (1, 17, 33, 100, 5),
):
    gen = torch.Generator().manual_seed(seed)
    block_size, q_heads = 16, kv_heads * group
    needed = [-(-length // block_size) for length in lengths]
    num_blocks, width = max(40, sum(needed) + 3), max(7, *needed)
    k_cache = torch.randn(num_blocks, kv_heads, head_dim, block_size, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor(lengths)
    permutation = torch.randperm(num_blocks, generator=gen).tolist()
    tables, used = [], 0
    for blocks in needed:
        tables.append(permutation[used : used + blocks] + [0] * (width - blocks))
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


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window,softcap", [(None, None), (300, None), (None, 5.0), (200, 5.0)])
@pytest.mark.parametrize("group,head_dim", [(4, 64), (1, 128), (9, 64)])
@pytest.mark.parametrize(
    "lengths", [(1000, 129, 700, 16, 255), (1000,), (1000, 5)], ids=["five", "one", "two"]
)
def test_long_sequences_read_in_tiles_match_reference(
    dtype, tolerance, window, softcap, group, head_dim, lengths
):
    """Up to 1000 tokens: the register path reads keys and values a tile at a time (16 KB of keys: 128 tokens of
    bfloat16 at head_dim 64) with a running softmax, so lengths end mid-block and mid-tile, the maximum score moves
    from tile to tile and a window starts inside a block. One or two sequences (2 kv heads: fewer pairs than 4 a
    thread) are split in parts computed apart and combined; beside 1000 tokens, 5 leave some parts without keys.
    Group 9 takes the generic path (the same answers)."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 5, 2, group, head_dim, lengths=lengths)
    q = q * 3  # scores that spread: the running maximum and the rescaling matter
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), metadata, head_dim**-0.5, window, softcap
    )
    got = get_attention_backend("cpu").forward(
        q, k, v, k_cache, v_cache, metadata, head_dim**-0.5, window, softcap
    )
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_long_sequences_from_a_float8_cache_match_reference(dtype, tolerance):
    """Float8 blocks are half or a quarter the bytes, so a tile holds 256 tokens at head_dim 64: 1000 and 300
    tokens take several."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 6, 2, 4, 64, lengths=(1000, 300))
    fp8 = torch.empty(0, dtype=torch.float8_e4m3fn)
    k_cache, v_cache = to_cache_dtype(k_cache.float(), fp8), to_cache_dtype(v_cache.float(), fp8)
    expected = get_attention_backend("torch_ref").forward(
        q * 3, k, v, k_cache.clone(), v_cache.clone(), metadata, 0.125
    )
    got = get_attention_backend("cpu").forward(q * 3, k, v, k_cache, v_cache, metadata, 0.125)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("backend", ["cpu", "cpu_torch"])
@pytest.mark.parametrize("group,head_dim", [(3, 64), (8, 32), (9, 64), (2, 48)])
@pytest.mark.parametrize("lengths", [(1, 17, 33, 100, 5), (1000, 300)], ids=["short", "long"])
def test_float32_queries_read_a_bfloat16_cache(backend, group, head_dim, lengths):
    """A bfloat16 cache under float32 activations (dtype auto with bfloat16 matrices): register-blocked and
    generic paths widen the stored values exactly, so they match the reference on the same bfloat16 bytes to
    float32 rounding; a tile holds twice the float32 tokens, so 1000 and 300 tokens take several. The written K/V
    land rounded as PyTorch's cast."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(torch.float32, 8, 2, group, head_dim, lengths)
    k_cache, v_cache = k_cache.bfloat16(), v_cache.bfloat16()
    expected_cache = k_cache.clone(), v_cache.clone()
    expected = get_attention_backend("torch_ref").forward(
        q * 3, k, v, *expected_cache, metadata, head_dim**-0.5
    )
    got = get_attention_backend(backend).forward(q * 3, k, v, k_cache, v_cache, metadata, head_dim**-0.5)
    assert got.dtype == torch.float32
    assert torch.equal(k_cache, expected_cache[0]) and torch.equal(v_cache, expected_cache[1])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("which", ["block_tables", "seq_lens"])
def test_kernel_refuses_index_tensors_that_are_not_int64(which: str):
    # Read as int64 by the kernel, an int32 table would be read past its end (it segfaulted once in a benchmark).
    q, _, _, k_cache, v_cache, metadata = random_decode_batch(torch.float32)
    tables, lens = metadata.decode_block_tables, metadata.decode_seq_lens
    if which == "block_tables":
        tables = tables.to(torch.int32)
    else:
        lens = lens.to(torch.int32)
    with pytest.raises(ValueError, match=which):
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125)


def test_kernel_rejects_a_length_beyond_the_block_table():
    q, _, _, k_cache, v_cache, metadata = random_decode_batch(torch.float32)
    too_long = metadata.decode_seq_lens.clone()
    too_long[0] = metadata.decode_block_tables.shape[1] * 16 + 1
    with pytest.raises(ValueError, match="length"):
        cpu_ops.paged_decode_attention(q, k_cache, v_cache, metadata.decode_block_tables, too_long, 0.125)


def float8_decode_batch(dtype: torch.dtype, group: int, head_dim: int):
    """A decode batch whose caches are float8 e4m3: values from 1e-3 (e4m3 subnormals) to past 448 (saturated on
    writing) in float32, and new K/V that saturate too; in bfloat16 up to ~5 (scores of 1e3 have no meaningful
    bfloat16 softmax)."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 2, 2, group, head_dim)
    gen = torch.Generator().manual_seed(7)
    largest = 6.5 if dtype == torch.float32 else 1.5

    def spread(x: torch.Tensor) -> torch.Tensor:
        return x.float() * torch.exp(torch.empty(x.shape).uniform_(-7.0, largest, generator=gen))

    fp8 = torch.empty(0, dtype=torch.float8_e4m3fn)
    k_cache, v_cache = to_cache_dtype(spread(k_cache), fp8), to_cache_dtype(spread(v_cache), fp8)
    return q, spread(k).to(dtype), spread(v).to(dtype), k_cache, v_cache, metadata


# float32: keys up to 448 make scores of ~1e3, where summation order alone moves a score by ~1e-4 and its
# probability by as much (measured 4e-4 relative at most); bfloat16 as above.
@pytest.mark.parametrize("backend", ["cpu", "cpu_torch"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("group,head_dim", [(3, 64), (8, 32), (9, 64), (2, 48)])
def test_decode_from_a_float8_cache_matches_reference(backend, dtype, tolerance, group, head_dim):
    """Register-blocked (group <= 8, head_dim % 16 == 0) and generic paths read e4m3 exactly (the next test); the
    reference widens the same bytes with PyTorch. The written K/V land in the cache saturated at +-448."""
    q, k, v, k_cache, v_cache, metadata = float8_decode_batch(dtype, group, head_dim)
    expected_cache = k_cache.clone(), v_cache.clone()
    expected = get_attention_backend("torch_ref").forward(q, k, v, *expected_cache, metadata, head_dim**-0.5)
    got = get_attention_backend(backend).forward(q, k, v, k_cache, v_cache, metadata, head_dim**-0.5)
    assert torch.equal(k_cache.view(torch.uint8), expected_cache[0].view(torch.uint8))
    assert not k_cache.float().isnan().any()
    if dtype == torch.float32:
        assert k_cache.float().abs().max().item() == 448.0
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_every_float8_value_is_read_exactly():
    """One cached token per sequence: attention returns its value row, so the output is the kernel's reading of
    each of the 254 finite e4m3 bit patterns (subnormals included; the kernel runs with denormals-are-zero set)."""
    patterns = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    values = torch.cat((patterns, patterns[:2])).view(torch.float8_e4m3fn).reshape(4, 64)
    v_cache = torch.zeros(4, 1, 16, 64, dtype=torch.float8_e4m3fn)
    v_cache[:, 0, 0] = values
    k_cache = torch.zeros(4, 1, 64, 16, dtype=torch.float8_e4m3fn)
    q = torch.randn(4, 1, 64)
    tables, lens = torch.arange(4).reshape(4, 1), torch.ones(4, dtype=torch.int64)
    got = cpu_ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125)
    assert torch.equal(got.reshape(4, 64), values.float())
