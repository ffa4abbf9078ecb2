"""The fused C layer operations against their PyTorch definitions: float32 to rounding error, bfloat16 to the last
bit (the kernels round where PyTorch's operator sequence rounds; reduction order and exp may still differ by one
ulp), on the single-threaded and the parallel row counts, at every ISA level this machine supports (the
`isa_level` fixture)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedserve.attention.backend import write_kv_cache as torch_write_kv_cache
from pagedserve.layers.activation import SiluAndMul
from pagedserve.layers.layernorm import RMSNorm
from pagedserve.layers.linear import MIXED_GEMM_MAX_ROWS, linear
from pagedserve.layers.rotary import RotaryEmbedding, apply_rotary
from pagedserve.ops import build
from pagedserve.ops import cpu as cpu_ops

pytestmark = pytest.mark.usefixtures("isa_level")

DTYPES = [(torch.float32, 1e-6), (torch.bfloat16, 0.0)]
ROWS = [1, 7, 200]  # 200 crosses the kernels' parallel threshold


def test_kernels_build_here():
    assert build.load() is not None, "a C compiler is on every machine we support; the kernels must build"


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_with_and_without_residual(dtype, atol, rows):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen).to(dtype)
    residual = torch.randn(rows, 576, generator=gen).to(dtype)
    weight = torch.rand(576, generator=gen).to(dtype)
    # bfloat16: one ulp where the float32 sum of squares is reduced in another order than PyTorch's
    # float32: the sum of squares reduced in another order (SSE2, AVX2 and AVX-512 lanes): a few ulp
    tolerance = dict(atol=atol, rtol=2e-6) if dtype == torch.float32 else dict(atol=0, rtol=2**-7)
    got = cpu_ops.rms_norm(x, weight, 1e-5)
    torch.testing.assert_close(got, F.rms_norm(x, (576,), weight, 1e-5), **tolerance)
    expected_sum = x + residual
    expected = F.rms_norm(expected_sum, (576,), weight, 1e-5)
    got = cpu_ops.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(residual, expected_sum)  # the sum is written into the residual's storage
    torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_heads_in_place_on_a_strided_view(dtype, atol, rows):
    """Qwen3's q/k norms on the q|k heads of a merged projection (rows strided by the v columns too)."""
    gen = torch.Generator().manual_seed(rows)
    q_heads, kv_heads, head_dim = 16, 8, 128
    qkv = torch.randn(rows, (q_heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    q_weight, k_weight = (torch.rand(head_dim, generator=gen).to(dtype) + 0.5 for _ in range(2))
    qk = qkv[:, : (q_heads + kv_heads) * head_dim].view(rows, q_heads + kv_heads, head_dim)
    v_before = qkv[:, (q_heads + kv_heads) * head_dim :].clone()
    expected_q = F.rms_norm(qk[:, :q_heads], (head_dim,), q_weight, 1e-6)
    expected_k = F.rms_norm(qk[:, q_heads:], (head_dim,), k_weight, 1e-6)
    tolerance = dict(atol=atol, rtol=2e-6) if dtype == torch.float32 else dict(atol=0, rtol=2**-7)
    out = cpu_ops.rms_norm_heads_(qk, q_weight, k_weight, q_heads, 1e-6)
    assert out.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(qk[:, :q_heads], expected_q, **tolerance)
    torch.testing.assert_close(qk[:, q_heads:], expected_k, **tolerance)
    assert torch.equal(qkv[:, (q_heads + kv_heads) * head_dim :], v_before)  # v untouched


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_and_mul(dtype, atol, rows):
    x = torch.randn(rows, 2 * 1536, generator=torch.Generator().manual_seed(rows)).to(dtype) * 4
    gate, up = x.chunk(2, dim=-1)
    # bfloat16: an ulp of silu where glibc's vector expf and PyTorch's exp round apart, then one more in the product
    tolerance = dict(atol=atol, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-6, rtol=2**-6)
    torch.testing.assert_close(cpu_ops.silu_and_mul(x), F.silu(gate) * up, **tolerance)


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_gelu_tanh_and_mul(dtype, atol, rows):
    """Gemma's gate: PyTorch's gelu(approximate="tanh") times up."""
    x = torch.randn(rows, 2 * 1152, generator=torch.Generator().manual_seed(rows)).to(dtype) * 4
    gate, up = x.chunk(2, dim=-1)
    # float32: tanhf against PyTorch's vectorised tanh, a few ulp (1e-6 absolute where gelu is ~0); bfloat16: one
    # more rounding in the product
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-5, rtol=2**-6)
    torch.testing.assert_close(
        cpu_ops.gelu_tanh_and_mul(x), F.gelu(gate, approximate="tanh") * up, **tolerance
    )


@pytest.mark.parametrize("rows", ROWS)
def test_norms_with_a_float32_weight_under_bfloat16(rows):
    """Gemma's norms keep 1 + weight in float32: normalised in float32, times the weight, rounded once to
    bfloat16 (transformers' Gemma3RMSNorm); the residual sum is rounded to bfloat16 first, as `x + residual`."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen).bfloat16()
    residual = torch.randn(rows, 576, generator=gen).bfloat16()
    weight = (
        1.0 + (torch.rand(576, generator=gen) - 0.5) * 0.02
    )  # 1 + w: bfloat16 would round most of it away
    expected_sum = x + residual
    expected = F.rms_norm(expected_sum.float(), (576,), weight, 1e-6).bfloat16()
    got = cpu_ops.rms_norm(x, weight, 1e-6, residual)
    assert torch.equal(residual, expected_sum)
    torch.testing.assert_close(got, expected, atol=0, rtol=2**-7)
    heads = torch.randn(rows, 6, 64, generator=gen).bfloat16()
    q_weight, k_weight = weight[:64].clone(), weight[64:128].clone()
    expected_q = F.rms_norm(heads[:, :4].float(), (64,), q_weight, 1e-6).bfloat16()
    expected_k = F.rms_norm(heads[:, 4:].float(), (64,), k_weight, 1e-6).bfloat16()
    cpu_ops.rms_norm_heads_(heads, q_weight, k_weight, 4, 1e-6)
    torch.testing.assert_close(heads[:, :4], expected_q, atol=0, rtol=2**-7)
    torch.testing.assert_close(heads[:, 4:], expected_k, atol=0, rtol=2**-7)


@pytest.mark.parametrize("dtype,atol", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
def test_rotary_in_place_on_a_strided_view(dtype, atol, rows):
    rotary = RotaryEmbedding(64, 4096, 10000.0, {"rope_type": "llama3", "factor": 8.0,
                             "original_max_position_embeddings": 1024})  # fmt: skip
    gen = torch.Generator().manual_seed(rows)
    qkv = torch.randn(rows, 15 * 64, generator=gen).to(dtype)
    positions = torch.randint(0, 4096, (rows,), generator=gen)
    qk = qkv[:, : 12 * 64].view(rows, 12, 64)
    v_before = qkv[:, 12 * 64 :].clone()
    cos, sin = rotary.cos_sin(positions, dtype)
    expected = apply_rotary(qk, cos, sin)
    cpu_ops.rotary_neox_(qk, positions, rotary.cos_cache, rotary.sin_cache)
    torch.testing.assert_close(qk, expected, atol=atol, rtol=1e-6)
    assert torch.equal(qkv[:, 12 * 64 :], v_before)  # only the rotated heads change


@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_partial_rotary_turns_the_first_dims_of_each_head_only(dtype, atol):
    """Phi-4-mini's layout: 48 of 64 dims rotated by a LongRoPE table (its cos/sin factor included), the rest of
    each head untouched, as transformers' apply_rotary_pos_emb does."""
    scaling = {"rope_type": "longrope", "original_max_position_embeddings": 64, "factor": 32.0,
               "short_factor": [1.0] * 24, "long_factor": [1.0 + i / 4 for i in range(24)], "use_long_factor": True,
               "resolved_for_serving": True}  # fmt: skip
    rotary = RotaryEmbedding(64, 512, 10000.0, scaling, rotary_dim=48)
    assert rotary.cos_cache.shape == (512, 48)
    gen = torch.Generator().manual_seed(5)
    qk = torch.randn(9, 6, 64, generator=gen).to(dtype)
    positions = torch.randint(0, 512, (9,), generator=gen)
    cos, sin = rotary.cos_sin(positions, dtype)
    expected = apply_rotary(qk, cos, sin)
    tail = qk[..., 48:].clone()
    cpu_ops.rotary_neox_(qk, positions, rotary.cos_cache, rotary.sin_cache)
    torch.testing.assert_close(qk, expected, atol=atol, rtol=1e-6)
    assert torch.equal(qk[..., 48:], tail)


def test_rotary_rejects_a_position_outside_the_table():
    rotary = RotaryEmbedding(64, 16, 10000.0)
    with pytest.raises(ValueError, match="position"):
        cpu_ops.rotary_neox_(torch.randn(2, 3, 64), torch.tensor([3, 16]), rotary.cos_cache, rotary.sin_cache)


@pytest.mark.parametrize("dtype,atol", DTYPES)
def test_write_kv_cache_matches_the_pytorch_scatter(dtype, atol):
    gen = torch.Generator().manual_seed(0)
    head_dim, rows = 64, 37
    qkv = torch.randn(rows, 15 * head_dim, generator=gen).to(dtype)  # 9 query heads, 3 kv heads
    key = qkv[:, 9 * head_dim : 12 * head_dim].view(rows, 3, head_dim)
    value = qkv[:, 12 * head_dim :].view(rows, 3, head_dim)
    (k_cache, v_cache), (expected_k, expected_v) = write_rows_both_ways(key, value, dtype, gen)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    with pytest.raises(ValueError, match="slot"):
        cpu_ops.write_kv_cache(key, value, k_cache, v_cache, torch.full((rows,), KV_TEST_BLOCKS * 16))


KV_TEST_BLOCKS = 12


def write_rows_both_ways(
    key: torch.Tensor, value: torch.Tensor, cache_dtype: torch.dtype, gen: torch.Generator
):
    """K and V rows into random slots of KV_TEST_BLOCKS blocks of 16 in `cache_dtype` caches, by PyTorch
    (attention/backend.py) and by the C scatter: (C's caches, PyTorch's caches)."""
    rows, kv_heads, head_dim = key.shape
    slots = torch.randperm(KV_TEST_BLOCKS * 16, generator=gen)[:rows]
    k_cache = torch.zeros(KV_TEST_BLOCKS, kv_heads, head_dim, 16, dtype=cache_dtype)
    v_cache = torch.zeros(KV_TEST_BLOCKS, kv_heads, 16, head_dim, dtype=cache_dtype)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    torch_write_kv_cache(key, value, expected_k, expected_v, slots)
    assert cpu_ops.can_write_kv_cache(key, value, k_cache)
    cpu_ops.write_kv_cache(key, value, k_cache, v_cache, slots)
    return (k_cache, v_cache), (expected_k, expected_v)


def key_and_value(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The K and V views of merged rows holding 2 kv heads of 64 (K first, then 2 heads' worth, then V)."""
    return qkv[:, :128].view(-1, 2, 64), qkv[:, 256:384].view(-1, 2, 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_into_a_float8_cache_rounds_as_pytorch_casts(isa_level, dtype):
    """--kv-cache-dtype fp8: the C scatter converts to e4m3 byte for byte as PyTorch does after saturating at
    +-448: random values over e4m3's whole range, its subnormals, exact rounding ties, -0.0 and values past 448."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(40, 4 * 2 * 64, generator=gen)
    qkv *= torch.exp(torch.empty(qkv.shape).uniform_(-12.0, 7.0, generator=gen))
    ties = torch.tensor([2.0**-10, 3 * 2.0**-10, 1.0625, 1.1875, 9.0, 11.0, 464.0, 440.0, -0.0, 500.0, -1e9])
    qkv[0, : ties.numel()] = ties
    qkv[1, 2 * 2 * 64 : 2 * 2 * 64 + ties.numel()] = -ties
    caches, expected = write_rows_both_ways(*key_and_value(qkv.to(dtype)), torch.float8_e4m3fn, gen)
    for got, want in zip(caches, expected):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_float32_rows_into_a_bfloat16_cache_round_as_pytorch_casts(isa_level):
    """A bfloat16 cache under float32 activations (dtype auto with bfloat16 matrices, or --kv-cache-dtype
    bfloat16): the C scatter rounds to nearest even bit for bit as PyTorch's cast, ties, subnormals, -0.0 and
    infinities included, and keeps NaN NaN; a float32 cache under bfloat16 activations is not a pair the kernels
    take."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(40, 4 * 2 * 64, generator=gen)
    qkv *= torch.exp(torch.empty(qkv.shape).uniform_(-90.0, 80.0, generator=gen))
    ties = torch.tensor(
        [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 1e-40, float("inf"), float("nan"), -0.0]
    )
    qkv[0, : ties.numel()] = ties
    qkv[1, 2 * 2 * 64 : 2 * 2 * 64 + ties.numel()] = ties
    key, value = key_and_value(qkv)
    caches, expected = write_rows_both_ways(key, value, torch.bfloat16, gen)
    for got, want in zip(caches, expected):
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan) and nan.sum() == 1  # NaN's payload is not an answer
        assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    assert not cpu_ops.can_write_kv_cache(key.bfloat16(), value.bfloat16(), caches[0].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layers_take_the_kernel_and_the_pytorch_path_alike(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    norm = RMSNorm(576, 1e-5).to(dtype)
    norm.weight.data = torch.rand(576, generator=gen).to(dtype)
    x = torch.randn(5, 576, generator=gen).to(dtype)
    residual = torch.randn(5, 576, generator=gen).to(dtype)
    gate_up = torch.randn(5, 3072, generator=gen).to(dtype)
    fast = (norm(x), *norm(x, residual.clone()), SiluAndMul()(gate_up))
    monkeypatch.setattr(cpu_ops, "available", lambda *tensors: False)
    slow = (norm(x), *norm(x, residual.clone()), SiluAndMul()(gate_up))
    for got, expected in zip(fast, slow):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=2**-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "n,k", [(960, 576), (49152 // 16, 576), (576, 1536), (7, 33)]
)  # tails: n % 4, k % 32 (and k % 8, k % 16 for the AVX2 and AVX-512 float32 loops)
def test_gemv_is_as_exact_as_the_gemm(rows, n, k, dtype):
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    weight = torch.randn(n, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype)
    assert cpu_ops.can_gemv(x, weight, bias)
    for b in (None, bias):
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        got = cpu_ops.gemv(x, weight, b)
        assert got.dtype == dtype and got.shape == (rows, n)
        if dtype == torch.bfloat16:
            # float32 accumulation, one rounding to bf16: within half a bf16 ulp of the exact result (+ sum order)
            torch.testing.assert_close(got.double(), exact, atol=1e-3, rtol=2**-8)
        else:
            # float32 sums in another order than the GEMM's: as close to the exact result as F.linear is
            gemm_error = (F.linear(x, weight, b).double() - exact).abs().max().item()
            assert (got.double() - exact).abs().max().item() <= max(4 * gemm_error, 1e-5)


def test_gemv_takes_only_what_it_handles():
    w = torch.randn(8, 64).bfloat16()
    assert not cpu_ops.can_gemv(torch.randn(5, 64).bfloat16(), w, None)  # too many rows: the GEMM's job
    assert not cpu_ops.can_gemv(torch.randn(1, 64), w, None)  # mixed dtypes
    assert not cpu_ops.can_gemv(torch.randn(64, 2).bfloat16().t(), w, None)  # not contiguous
    assert not cpu_ops.can_gemv(torch.randn(1, 64).half(), w.half(), None)  # float16: not a kernel dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 9])  # one thread, and rows split across threads
def test_argmax_matches_torch_and_keeps_the_first_of_ties(isa_level, dtype, rows):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, 49152 + 5, generator=gen).to(dtype)
    logits[-1, -1] = 60.0  # the maximum in the scalar tail (of the last row, or the only one before the tie)
    logits[0, 100] = logits[0, 7] = 70.0  # a tie: the first index wins, as torch.argmax
    assert torch.equal(cpu_ops.argmax(logits), logits.float().argmax(dim=-1))
    assert cpu_ops.argmax(logits)[0] == 7
    short = logits[:, :5].contiguous()  # shorter than a vector: the scalar loop alone
    assert torch.equal(cpu_ops.argmax(short), short.float().argmax(dim=-1))


def test_the_loaded_library_is_the_level_asked_for(isa_level):
    assert build.active_level() == isa_level


# Rows on both sides of the AVX2 kernels' switch (tile up to 8 rows, panels above; csrc/gemv.c), shapes with a
# partial last panel of columns and a k that is no multiple of 8.
@pytest.mark.parametrize("m", [1, 2, 3, 5, 9, 33, 300])
@pytest.mark.parametrize("n,k", [(960, 576), (7, 33), (576, 1536), (37, 1030)])
def test_float32_by_bfloat16_weights_is_as_exact_as_the_float32_gemm(m, n, k):
    """CPUs without bfloat16 instructions keep bf16 weights and compute in float32: the weights are widened in
    registers (exactly: a 16-bit shift), so the product equals the float32 GEMM's up to summation order."""
    gen = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=gen)
    weight = torch.randn(n, k, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen)
    assert cpu_ops.can_mixed_gemm(x, weight, bias)
    for b in (None, bias):
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        got = cpu_ops.mixed_gemm(x, weight, b)
        assert got.dtype == torch.float32 and got.shape == (m, n)
        gemm_error = (F.linear(x, weight.float(), b).double() - exact).abs().max().item()
        assert (got.double() - exact).abs().max().item() <= max(4 * gemm_error, 1e-5)


@pytest.mark.parametrize("m", [12, 17])
def test_float32_by_bfloat16_weights_past_the_cache_sized_switch(m):
    """Weights over 16 MB (an LM head) keep the tile up to 16 rows on AVX2; both sides match float32."""
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 576, generator=gen)
    weight = torch.randn(16400, 576, generator=gen).bfloat16()
    torch.testing.assert_close(
        cpu_ops.mixed_gemm(x, weight), F.linear(x, weight.float()), atol=2e-4, rtol=1e-4
    )


def test_linear_takes_the_mixed_path_up_to_its_row_limit_and_widens_above():
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 96, generator=gen).bfloat16()
    for rows in (1, 4, MIXED_GEMM_MAX_ROWS, MIXED_GEMM_MAX_ROWS + 1):
        x = torch.randn(rows, 96, generator=gen)
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight.float()), atol=1e-4, rtol=1e-5)
