"""LoRA on a merged linear layer: each token's output gets its adapter's B (A x) on top of the base layer's W x.

Adapters sit in fixed slots (punica's layout, --max-loras of them): every layer keeps, per slot, the adapter's A
[max rank, in] and B transposed [max rank, out] in float32 with the scaling folded into B, and the number of rows in
use. For a merged layer (q|k|v, gate|up) one adapter's parts are stacked: A's parts one under the other, B's
block-diagonal, so a part the adapter leaves alone is a zero block and the delta is two products per adapter.

`LoRABatch`, one object shared by every layer and set by the runner before the forward, says which rows run which
slot: on the CPU a per-row slot buffer read by one C kernel call a layer (csrc/lora_delta.c). That call records and
replays in the CPU decode graphs like any other kernel: the pointers (slots, row-slot buffer) never change, only
their contents, so a graph stays right whichever adapters the step runs. Elsewhere (CUDA, no C kernels) PyTorch
multiplies each (slot, first row, rows) span; the runner orders a step's sequences by adapter, so each adapter's
rows are one or two spans (gathering them by index had cost 2-3x the products at 8 decode rows, profiled).

Under tensor parallelism a column-parallel layer keeps all of A and its rows of B; a row-parallel one keeps its input
columns of A and all of B: its delta is then a partial sum like its base output, added before the one all-reduce
(sum over ranks of B (A_r x_r) = B (A x)), so adapters cost no extra collective.
"""

from __future__ import annotations

import torch

from pagedserve.ops import cpu as cpu_ops
from pagedserve.ops import recording


class LoRABatch:
    """The current step's rows by adapter slot, for every layer of the model."""

    def __init__(self, max_rows: int, use_kernel: bool, device: torch.device) -> None:
        self.use_kernel = use_kernel
        """CPU with the C kernels: one lora_delta call a layer (recorded in decode graphs); else PyTorch spans."""
        self.spans: list[tuple[int, int, int]] = []
        """(slot, first row, rows) of the rows that run an adapter; empty: none."""
        self.slot_of_row = torch.full((max_rows,), -1, dtype=torch.int32, device=device)
        """Each row's slot, -1 for none (the kernel's input; rows past the step's are never read)."""

    @property
    def active(self) -> bool:
        """A layer must add deltas: some row runs an adapter, or a decode graph is being recorded (its call must be
        in the graph for the steps that will replay it with adapters)."""
        return bool(self.spans) or (self.use_kernel and recording.current() is not None)

    def set_step(self, spans: list[tuple[int, int, int]], num_rows: int) -> None:
        """(slot, first row, rows) spans in row order; rows outside them run no adapter."""
        self.spans = merge_spans(spans)
        if self.use_kernel:
            rows = self.slot_of_row[:num_rows]
            rows.fill_(-1)
            for slot, first, count in self.spans:
                rows[first : first + count] = slot


class LayerLoRA:
    """One layer's adapter slots."""

    def __init__(
        self, batch: LoRABatch, slots: int, max_rank: int, in_size: int, out_size: int, device: torch.device
    ) -> None:
        self.batch = batch
        self.a = torch.zeros(slots, max_rank, in_size, device=device)
        self.bt = torch.zeros(slots, max_rank, out_size, device=device)
        self.ranks = torch.zeros(slots, dtype=torch.int32, device=device)
        self._ranks = [0] * slots  # the same, for the PyTorch path without a device read

    def set_slot(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Puts an adapter's stacked (A [rank, in], B [out, rank] scaled) in `slot`; None: the adapter leaves this
        layer alone."""
        rank = 0 if pair is None else pair[0].shape[0]
        if rank:
            a, b = pair  # type: ignore[misc]
            self.a[slot, :rank] = a
            self.bt[slot, :rank] = b.t()
        self.ranks[slot] = rank
        self._ranks[slot] = rank

    def add_delta(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the base layer's output for `x`, written in place) plus each row's adapter delta."""
        batch = self.batch
        if batch.use_kernel:
            if not x.is_contiguous():
                x = (
                    x.contiguous()
                )  # a copy: a graph being recorded is refused (it computed), the step stays eager
            rows = batch.slot_of_row[: x.shape[0]]
            cpu_ops.lora_delta(x, out, self.a, self.bt, self.ranks, rows)
            return out
        for slot, first, count in batch.spans:
            rank = self._ranks[slot]
            if rank == 0:  # this adapter leaves the layer alone
                continue
            a, bt = self.a[slot, :rank], self.bt[slot, :rank]
            part = x.narrow(0, first, count)
            delta = (part.to(a.dtype) @ a.t()) @ bt
            out.narrow(0, first, count).add_(delta.to(out.dtype))
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
    """(slot, first row, rows) spans in row order, adjacent spans of one slot made one."""
    merged: list[tuple[int, int, int]] = []
    for slot, first, count in spans:
        if merged and merged[-1][0] == slot and merged[-1][1] + merged[-1][2] == first:
            merged[-1] = (slot, merged[-1][1], merged[-1][2] + count)
        else:
            merged.append((slot, first, count))
    return merged
