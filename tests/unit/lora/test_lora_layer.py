"""The LoRA delta of a merged layer (layers/lora.py): each row gets its own slot's W x + scaling B (A x), parts of a
merged layer stacked block-diagonally, untouched parts and rows without an adapter left alone — through the C
kernel (csrc/lora_delta.c, at every ISA level this machine runs) and through the PyTorch spans, which must agree."""

from __future__ import annotations

import pytest
import torch

from pagedserve.layers.linear import MergedLinear
from pagedserve.layers.lora import LayerLoRA, LoRABatch, merge_spans, stack_parts
from pagedserve.ops.recording import KernelRecording

SIZES = {"q": 12, "k": 4, "v": 4}
MAX_RANK = 4  # per part


def _layer_with_two_adapters(use_kernel: bool, dtype: torch.dtype):
    """A q|k|v layer with adapter slot 0 on q and v (rank 2, scaling 0.5) and slot 1 on k only (rank 3, 2.0);
    returns (layer, batch, {slot: the merged float32 weight})."""
    torch.manual_seed(0)
    layer = MergedLinear(16, SIZES, bias=False)
    layer.weight.data.normal_()
    layer.weight.data = layer.weight.data.to(dtype)
    batch = LoRABatch(max_rows=16, use_kernel=use_kernel, device=torch.device("cpu"))
    layer.lora = LayerLoRA(batch, 2, 3 * MAX_RANK, 16, layer.output_size, torch.device("cpu"))
    merged = {}
    for slot, ranks, scaling in [(0, {"q": 2, "v": 2}, 0.5), (1, {"k": 3}, 2.0)]:
        stacked, full = [], layer.weight.data.float().clone()
        for part, rank in ranks.items():
            first, size = layer.shard_offsets[part]
            a, b = torch.randn(rank, 16), torch.randn(size, rank)
            stacked.append((first, a, b))
            full[first : first + size] += scaling * (b @ a)
        layer.lora.set_slot(slot, stack_parts(stacked, layer.output_size, scaling))
        merged[slot] = full
    return layer, batch, merged


def _check(layer, batch, merged, dtype, tolerance) -> None:
    x = torch.randn(7, 16).to(dtype)
    batch.set_step([(0, 0, 1), (0, 3, 2), (1, 6, 1)], 7)  # rows 1, 2, 5: no adapter
    expected = x.float() @ layer.weight.data.float().t()
    for slot, rows in {0: [0, 3, 4], 1: [6]}.items():
        expected[rows] = x[rows].float() @ merged[slot].t()
    torch.testing.assert_close(layer(x).float(), expected, rtol=tolerance, atol=tolerance)
    batch.set_step([(1, 0, 7)], 7)  # every row
    torch.testing.assert_close(layer(x).float(), x.float() @ merged[1].t(), rtol=tolerance, atol=tolerance)
    batch.set_step([], 7)
    torch.testing.assert_close(layer(x), x @ layer.weight.data.t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_adds_each_rows_slot(isa_level, dtype) -> None:
    layer, batch, merged = _layer_with_two_adapters(True, dtype)
    _check(layer, batch, merged, dtype, 1e-4 if dtype == torch.float32 else 0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pytorch_spans_add_each_rows_slot(dtype) -> None:
    layer, batch, merged = _layer_with_two_adapters(False, dtype)
    _check(layer, batch, merged, dtype, 1e-4 if dtype == torch.float32 else 0.1)


def test_an_empty_slot_or_layer_adds_nothing_and_a_refilled_slot_forgets_the_old_adapter(isa_level) -> None:
    layer, batch, merged = _layer_with_two_adapters(True, torch.float32)
    layer.lora.set_slot(0, None)  # the adapter in slot 0 leaves this layer alone
    x = torch.randn(3, 16)
    batch.set_step([(0, 0, 3)], 3)
    torch.testing.assert_close(layer(x), x @ layer.weight.data.t())
    a, b = torch.randn(1, 16), torch.randn(layer.output_size, 1)
    layer.lora.set_slot(1, (a, b))  # rank 1 where rank 3 was: the old rows are never read
    batch.set_step([(1, 0, 3)], 3)
    torch.testing.assert_close(layer(x), x @ (layer.weight.data + b @ a).t(), rtol=1e-4, atol=1e-4)


def test_a_recorded_pass_holds_the_kernel_call_even_without_adapters(isa_level) -> None:
    """A decode graph captured at a step without adapters is replayed at steps with them: the call must be in it,
    reading the row-slot buffer the runner refills every step."""
    layer, batch, _ = _layer_with_two_adapters(True, torch.float32)
    batch.set_step([], 2)
    recording = KernelRecording()
    with recording.active():
        layer(torch.randn(2, 16))
    names = [function.__name__ for function, _ in recording.calls]
    assert names == ["gemv", "lora_delta"]  # the base product, then the delta


def test_adjacent_spans_of_one_slot_merge():
    spans = [(1, 0, 2), (1, 2, 1), (2, 3, 1), (1, 5, 4), (1, 9, 1)]
    assert merge_spans(spans) == [(1, 0, 3), (2, 3, 1), (1, 5, 5)]


def test_stack_parts_puts_each_parts_b_in_its_rows_and_rank_columns():
    a1, b1 = torch.ones(2, 3), torch.full((4, 2), 2.0)
    a2, b2 = torch.full((1, 3), 3.0), torch.full((2, 1), 5.0)
    a, b = stack_parts([(0, a1, b1), (6, a2, b2)], out_size=8, scaling=0.5)
    assert a.shape == (3, 3) and torch.equal(a[2], a2[0])
    expected = torch.zeros(8, 3)
    expected[0:4, 0:2] = 1.0
    expected[6:8, 2:3] = 2.5
    assert torch.equal(b, expected)
