"""The W8A8 epilogue kernel (csrc/int8_rows.c), on each ISA level this machine runs, against PyTorch."""

from __future__ import annotations

import pytest
import torch

from pagedserve.ops import cpu as cpu_ops


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
