"""The W8A8 kernels (csrc/int8_rows.c), the int8 product and its epilogue, on each ISA level this machine runs,
against PyTorch."""

from __future__ import annotations

import pytest
import torch

from pagedserve.ops import cpu_scaled as cpu_ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_epilogue_equals_pytorch(isa_level, dtype, with_bias) -> None:
    gen = torch.Generator().manual_seed(3)
    acc = torch.randint(-(2**20), 2**20, (7, 45), generator=gen, dtype=torch.int32)
    x_scale = torch.rand(7, generator=gen) / 100
    w_scale = torch.rand(45, generator=gen) / 100
    bias = torch.randn(45, generator=gen) if with_bias else None
    got = cpu_ops.int8_epilogue(acc, x_scale, w_scale, bias, dtype)
    assert got is not None and got.dtype == dtype and got.shape == (7, 45)
    expected = acc.double() * x_scale.double()[:, None] * w_scale.double()
    if bias is not None:
        expected += bias.double()
    # float32: one rounding per product (the kernel may associate the two scalings either way); bfloat16: once more
    tolerance = 1e-6 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=1e-6)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 45, 576), (7, 33, 100), (4, 8, 16), (17, 5, 1537)])
def test_int8_gemm_is_exact(isa_level, m, n, k) -> None:
    """The int8 product in int32, every element exact: odd shapes (a k tail past the 16-wide loop, a partial tile
    of rows) and the extremes -128 and 127, whose pair sums vpmaddwd must not saturate."""
    from pagedserve.ops import build

    gen = torch.Generator().manual_seed(m * n + k)
    x = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    x[0, :] = -128
    w[0, :] = -128
    w[-1, :] = 127
    acc = torch.empty(m, n, dtype=torch.int32)
    library = build.load()
    assert library.int8_gemm(x.data_ptr(), w.data_ptr(), acc.data_ptr(), m, n, k, 2) == 0
    expected = x.long() @ w.long().t()
    assert torch.equal(acc.long(), expected)
    # The layer's choice: this kernel below the AVX-512 levels, torch._int_mm (oneDNN) on them.
    chosen = cpu_ops.int8_gemm(x, w)
    if isa_level in ("avx512", "avx512_bf16"):
        assert chosen is None
    else:
        assert chosen is not None and torch.equal(chosen.long(), expected)


def _pytorch_quantize(x: torch.Tensor, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """layers/ct_quant.py's PyTorch path (compressed-tensors' arithmetic)."""
    from pagedserve.layers.ct_quant import INT8_MAX, _per_row_scales

    x32 = x.float()
    scale = _per_row_scales(x32, "tensor" if per_tensor else "token", INT8_MAX)
    q = torch.round(x32 / scale).clamp_(-128, 127).to(torch.int8)
    return q, scale.reshape(-1).expand(x.shape[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_int8_quantize_is_bit_identical_to_pytorch(isa_level, dtype, per_tensor) -> None:
    """Every int8 value and scale equal PyTorch's. Row 0 has absmax 382.5 (scale 3.0) and values 3n + 1.5, whose
    quotients are exactly n + 0.5: round-half-even must give the even neighbour, which a multiplication by a rounded
    reciprocal of 3 would miss. A zero row takes the 1e-12 floor."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 1000, generator=gen) * torch.tensor([1.0, 1e-3, 30.0, 0.0, 7.0, 1.0])[:, None]
    x[0, :200] = torch.arange(-100, 100) * 3.0 + 1.5
    x[0, 200] = 382.5
    x = x.to(dtype)
    got = cpu_ops.int8_quantize(x, per_tensor)
    assert got is not None
    q, scales = got
    expected_q, expected_scales = _pytorch_quantize(x, per_tensor)
    assert torch.equal(scales, expected_scales)
    assert torch.equal(q, expected_q)
    if dtype == torch.float32 and not per_tensor:
        assert scales[0] == 3.0 and q[0, 100].item() == 0 and q[0, 101].item() == 2  # 0.5 -> 0, 1.5 -> 2
