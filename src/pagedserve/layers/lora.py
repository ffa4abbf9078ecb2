"""LoRA on a merged linear layer: each token's output gets its adapter's B (A x) on top of the base layer's W x.

A step mixes tokens of several adapters (and of none): `LoRABatch`, one object shared by every layer of the model
and set by the runner before the forward, says which rows belong to which adapter, as spans of rows (the runner
orders a step's sequences by adapter, so each adapter's rows are one or two spans: slices, no gather or scatter;
indexing the rows instead cost 2-3x the delta's matrix products at 8 decode rows, profiled). Each layer keeps its adapters'
matrices in `LayerLoRA.weights`. For a merged layer (q|k|v, gate|up) one adapter's parts are stacked: A is the parts'
A matrices one under the other [sum of ranks, in], B is block-diagonal [out, sum of ranks] with the scaling folded
in, so a part the adapter leaves alone is a zero block and the delta is two matrix products per adapter.

Under tensor parallelism a column-parallel layer keeps all of A and its rows of B; a row-parallel one keeps its input
columns of A and all of B: its delta is then a partial sum like its base output, added before the one all-reduce
(sum over ranks of B (A_r x_r) = B (A x)), so adapters cost no extra collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRABatch:
    """The current step's rows by adapter: (adapter id, first row, rows) spans. Empty: no adapter."""

    spans: list[tuple[int, int, int]] = field(default_factory=list)


class LayerLoRA:
    """One layer's adapters: id -> (A [rank, in], B [out, rank] times the scaling), in the activations' dtype."""

    def __init__(self, batch: LoRABatch) -> None:
        self.batch = batch
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add_delta(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the base layer's output for `x`, written in place) plus each row's adapter delta."""
        for lora_id, first, count in self.batch.spans:
            pair = self.weights.get(lora_id)
            if pair is None:  # this adapter leaves the layer alone
                continue
            a, b = pair
            if count == x.shape[0]:
                out.addmm_(x @ a.t(), b.t())
            else:
                out.narrow(0, first, count).addmm_(x.narrow(0, first, count) @ a.t(), b.t())
        return out


def stack_parts(
    parts: list[tuple[int, torch.Tensor, torch.Tensor]], out_size: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter's matrices for a merged layer from its parts: (first output row of the part in this layer, A
    [rank, in], B [rows, rank]). Returns (A stacked [sum of ranks, in], B block-diagonal [out_size, sum of ranks])."""
    a = torch.cat([part_a for _, part_a, _ in parts])
    b = torch.zeros(out_size, a.shape[0], dtype=a.dtype, device=a.device)
    column = 0
    for first_row, part_a, part_b in parts:
        rank = part_a.shape[0]
        b[first_row : first_row + part_b.shape[0], column : column + rank] = part_b * scaling
        column += rank
    return a, b


def merge_spans(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(adapter id, first row, rows) spans in row order, adjacent spans of one adapter made one."""
    merged: list[tuple[int, int, int]] = []
    for lora_id, first, count in spans:
        if merged and merged[-1][0] == lora_id and merged[-1][1] + merged[-1][2] == first:
            merged[-1] = (lora_id, merged[-1][1], merged[-1][2] + count)
        else:
            merged.append((lora_id, first, count))
    return merged
