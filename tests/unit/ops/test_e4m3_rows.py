"""The float8 e4m3 weight kernels (FP8 checkpoints, --quantization fp8): the activations' dynamic quantization
(csrc/e4m3_rows.c), the widening of a weight, and the few-row product (csrc/gemv.c's gemm_e4m3w), on each ISA level
this machine runs, against PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedserve.layers.ct_quant import FP8_MAX, scaled_linear
from pagedserve.ops import cpu_scaled as cpu_ops


def _pytorch_fp8_activations(x: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """compressed-tensors' dynamic float8 activations, in PyTorch: the values a layer multiplies."""
    x32 = x.float()
    amax = x32.abs().amax().reshape(1, 1) if per_tensor else x32.abs().amax(dim=-1, keepdim=True)
    scale = (amax / FP8_MAX).clamp(min=1e-12)
    return (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def _fp8_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.logspace(-3, 1, n)[:, None]
    scale = w.abs().amax(dim=1) / FP8_MAX
    return (w / scale[:, None]).to(torch.float8_e4m3fn), scale.contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_fp8_quantize_is_bit_identical_to_pytorch(isa_level, dtype, per_tensor) -> None:
    """Every value equals PyTorch's: rows spanning 12 decades (subnormal float8 values at the small end, where the
    e4m3 rounding is in steps of 2^-9 of the scale), a zero row (the 1e-12 floor) and values exactly halfway
    between two float8 values (round half to even)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 777, generator=gen) * torch.logspace(-9, 3, 777)
    x[3] = 0.0
    x[1] = x[1].clamp(-400.0, 400.0)  # row 1's absmax is its 448: scale 1
    x[1, :8] = torch.tensor([448.0, 1.0625, 1.1875, -1.0625, 0.5, 0.001953125 * 1.5, 17.0, 19.0])  # ties
    x = x.to(dtype)
    got = cpu_ops.fp8_quantize(x, per_tensor)
    assert got is not None and got.dtype == torch.float32
    assert torch.equal(got, _pytorch_fp8_activations(x, per_tensor))
    if not per_tensor:
        # 1.0625 -> 1.0 and 1.1875 -> 1.25: halfway, each to the even neighbour
        assert got[1, 1].item() == 1.0 and got[1, 2].item() == 1.25


def test_e4m3_dequantize_is_exact(isa_level) -> None:
    w, scale = _fp8_weight(37, 203, seed=1)  # 203: a tail past every vector width
    got = cpu_ops.e4m3_dequantize(w, scale)
    assert got is not None and torch.equal(got, w.float() * scale[:, None])


@pytest.mark.parametrize(("m", "n", "k"), [(1, 45, 576), (3, 33, 100), (8, 8, 16), (5, 7, 1537)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_e4m3w_equals_pytorch(isa_level, m, n, k, dtype, with_bias) -> None:
    """Odd shapes (a k tail, columns past the last group of 4, rows past the tile), float32 and bfloat16 in and
    out, against F.linear on the widened weight: float32 sums in another order (rtol 1e-5), bfloat16 rounded once
    (half an ulp, 2^-8)."""
    w, scale = _fp8_weight(n, k, seed=m + n + k)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(m, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen) if with_bias else None
    got = cpu_ops.gemm_e4m3w(x, w, scale, bias, dtype)
    assert got is not None and got.dtype == dtype and got.shape == (m, n)
    expected = F.linear(
        x.double(), (w.float() * scale[:, None]).double(), None if bias is None else bias.double()
    )
    tolerance = 1e-5 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=1e-4)


@pytest.mark.parametrize("activations", [None, "token", "tensor"])
@pytest.mark.parametrize("m", [1, 6, 40])
def test_fp8_layer_matches_its_pytorch_arithmetic(isa_level, activations, m) -> None:
    """scaled_linear on float8 weights: the kernels below FP8_GEMM_MAX_ROWS rows, the widened weight and the GEMM
    past them, against the same arithmetic in PyTorch (in float64: float32 sums of 96 terms up to ~10 differ by
    ~1e-5 with the order)."""
    w, scale = _fp8_weight(24, 96, seed=9)
    x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(24)
    got = scaled_linear(x, w, scale, activations, bias)
    x32 = x if activations is None else _pytorch_fp8_activations(x, activations == "tensor")
    expected = F.linear(x32.double(), (w.float() * scale[:, None]).double(), bias.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_scales_are_used_as_given(isa_level, dtype) -> None:
    """A checkpoint's input_scale (static activations): float8 and int8 values from that scale, not the input's
    absmax, bit-identical to PyTorch's; values past the scale's range saturate (float8 at 448, int8 at -128/127)."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(5, 300, generator=gen) * 3).to(dtype)
    scale = 0.0123
    got = cpu_ops.fp8_quantize(x, False, static_scale=scale)
    s = torch.tensor(scale)
    expected = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
    assert got is not None and torch.equal(got, expected)
    quantized = cpu_ops.int8_quantize(x, False, static_scale=scale)
    assert quantized is not None
    q, scales = quantized
    assert torch.equal(scales, s.expand(5))
    assert torch.equal(q, torch.round(x.float() / s).clamp(-128, 127).to(torch.int8))
    assert q.min().item() == -128 and q.max().item() == 127


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_quantize_in_groups_is_bit_identical_to_pytorch(isa_level, dtype) -> None:
    """Block FP8's activations: one scale per 32 values of a row (vLLM's per-token-group quantization), groups of
    very different magnitudes and an all-zero group (the 1e-12 floor)."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(3, 128, generator=gen) * torch.logspace(-6, 2, 4).repeat_interleave(32)
    x[1, 32:64] = 0.0
    x = x.to(dtype)
    got = cpu_ops.fp8_quantize(x, False, group=32)
    grouped = x.float().reshape(3, 4, 32)
    scale = (grouped.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    expected = ((grouped / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale).reshape(
        3, 128
    )
    assert got is not None and torch.equal(got, expected)


@pytest.mark.parametrize(
    ("m", "n", "k", "block"), [(1, 64, 96, (32, 32)), (3, 40, 100, (16, 32)), (8, 45, 64, (8, 64))]
)
def test_block_scaled_weights_equal_pytorch(isa_level, m, n, k, block) -> None:
    """Scales per block of rows x columns (DeepSeek-style FP8; partial blocks at the edges): the widened weight is
    exact, and the product matches F.linear on it."""
    from pagedserve.layers.ct_quant import expand_scales

    gen = torch.Generator().manual_seed(m + n + k)
    w = torch.randn(n, k, generator=gen).to(torch.float8_e4m3fn)
    scale = torch.rand(-(-n // block[0]), -(-k // block[1]), generator=gen) + 0.1
    widened = w.float() * expand_scales(scale, block, (n, k))
    got = cpu_ops.e4m3_dequantize(w, scale, block)
    assert got is not None and torch.equal(got, widened)
    x = torch.randn(m, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    out = cpu_ops.gemm_e4m3w(x, w, scale, bias, torch.float32, block)
    assert out is not None
    expected = F.linear(x.double(), widened.double(), bias.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
