"""A rank's slice of each checkpoint tensor form: float, GGUF blocks, int8 with scales, GPTQ act-order."""

from __future__ import annotations

import pytest
import torch

from pagedserve.layers.ct_quant import ScaledTensor
from pagedserve.layers.gguf_quant import Q4_1, Q6_K, QuantizedTensor, dequantize_reference, row_bytes
from pagedserve.layers.input_perm import PermutedWeight
from pagedserve.layers.shard import slice_columns, slice_rows


def _q4_1(rows: int, cols: int) -> QuantizedTensor:
    data = torch.randint(
        0, 256, (rows, row_bytes(Q4_1, cols)), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    data.view(-1, 20)[:, 0:4] = torch.tensor(
        [0, 0x3C, 0, 0], dtype=torch.uint8
    )  # d = 1.0, m = 0: finite values
    return QuantizedTensor(data, Q4_1, (rows, cols))


def test_gguf_rows_and_whole_block_columns_equal_the_dequantized_slice() -> None:
    weight = _q4_1(6, 128)
    full = dequantize_reference(weight.data, Q4_1, 128)
    rows = slice_rows(weight, 2, 3)
    assert torch.equal(dequantize_reference(rows.data, Q4_1, 128), full[2:5])
    cols = slice_columns(weight, 32, 64, "test")
    assert cols.shape == (6, 64)
    assert torch.equal(dequantize_reference(cols.data.contiguous(), Q4_1, 64), full[:, 32:96])


def test_columns_off_the_block_grid_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Q4_1 weight splits only on 32-column blocks"):
        slice_columns(_q4_1(2, 128), 16, 64, "test")
    k_quant = QuantizedTensor(torch.zeros(2, row_bytes(Q6_K, 512), dtype=torch.uint8), Q6_K, (2, 512))
    with pytest.raises(ValueError, match="256-column blocks"):
        slice_columns(k_quant, 128, 256, "test")


def test_int8_rows_keep_their_scales_and_columns_keep_all_scales() -> None:
    data = torch.arange(24, dtype=torch.int8).reshape(4, 6)
    scaled = ScaledTensor(data, torch.tensor([1.0, 2.0, 3.0, 4.0]), "token")
    rows = slice_rows(scaled, 1, 2)
    assert (
        torch.equal(rows.data, data[1:3])
        and rows.scale.tolist() == [2.0, 3.0]
        and rows.activations == "token"
    )
    cols = slice_columns(scaled, 2, 3, "test")
    assert torch.equal(cols.data, data[:, 2:5]) and cols.scale.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_act_order_weights_split_by_rows_but_not_by_columns() -> None:
    permuted = PermutedWeight(_q4_1(4, 64), torch.arange(64).flip(0))
    assert slice_rows(permuted, 0, 2).weight.shape == (2, 64)
    with pytest.raises(ValueError, match="act-order"):
        slice_columns(permuted, 0, 32, "test")


def test_float_tensors() -> None:
    tensor = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(slice_rows(tensor, 1, 2), tensor[1:3])
    assert torch.equal(slice_columns(tensor, 1, 2, "test"), tensor[:, 1:3])
    assert torch.equal(slice_rows(torch.arange(5.0), 1, 3), torch.tensor([1.0, 2.0, 3.0]))
