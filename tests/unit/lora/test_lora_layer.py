"""The LoRA delta of a merged layer (layers/lora.py): each row gets its own adapter's W x + scaling B (A x), parts
of a merged layer stacked block-diagonally, untouched parts and rows without an adapter left alone."""

from __future__ import annotations

import torch

from pagedserve.layers.linear import MergedLinear
from pagedserve.layers.lora import LayerLoRA, LoRABatch, merge_spans, stack_parts


def test_mixed_rows_get_their_own_adapters_delta_on_the_merged_parts():
    torch.manual_seed(0)
    sizes = {"q": 12, "k": 4, "v": 4}
    layer = MergedLinear(16, sizes, bias=False)
    layer.weight.data.normal_()
    batch = LoRABatch()
    layer.lora = LayerLoRA(batch)
    # Adapter 1 changes q and v (rank 2), adapter 2 only k (rank 3).
    parts = {1: {"q": 2, "v": 2}, 2: {"k": 3}}
    scaling = {1: 0.5, 2: 2.0}
    merged = {}
    for lora_id, ranks in parts.items():
        stacked, full = [], layer.weight.data.clone()
        for part, rank in ranks.items():
            first, size = layer.shard_offsets[part]
            a, b = torch.randn(rank, 16), torch.randn(size, rank)
            stacked.append((first, a, b))
            full[first : first + size] += scaling[lora_id] * (b @ a)
        layer.lora.weights[lora_id] = stack_parts(stacked, layer.output_size, scaling[lora_id])
        merged[lora_id] = full
    x = torch.randn(7, 16)
    batch.spans = [(1, 0, 1), (1, 3, 2), (2, 6, 1)]  # rows 1, 2, 5: no adapter
    out = layer(x)
    expected = x @ layer.weight.data.t()
    for lora_id, rows in {1: [0, 3, 4], 2: [6]}.items():
        expected[rows] = x[rows] @ merged[lora_id].t()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    batch.spans = [(2, 0, 7)]  # every row
    torch.testing.assert_close(layer(x), x @ merged[2].t(), rtol=1e-5, atol=1e-5)
    batch.spans = []
    torch.testing.assert_close(layer(x), x @ layer.weight.data.t())


def test_stack_parts_puts_each_parts_b_in_its_rows_and_rank_columns():
    a1, b1 = torch.ones(2, 3), torch.full((4, 2), 2.0)
    a2, b2 = torch.full((1, 3), 3.0), torch.full((2, 1), 5.0)
    a, b = stack_parts([(0, a1, b1), (6, a2, b2)], out_size=8, scaling=0.5)
    assert a.shape == (3, 3) and torch.equal(a[2], a2[0])
    expected = torch.zeros(8, 3)
    expected[0:4, 0:2] = 1.0
    expected[6:8, 2:3] = 2.5
    assert torch.equal(b, expected)


def test_adjacent_spans_of_one_adapter_merge():
    spans = [(1, 0, 2), (1, 2, 1), (2, 3, 1), (1, 5, 4), (1, 9, 1)]
    assert merge_spans(spans) == [(1, 0, 3), (2, 3, 1), (1, 5, 5)]
