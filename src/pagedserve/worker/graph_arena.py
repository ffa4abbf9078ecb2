"""One memory arena for the tensors that CPU decode graphs allocate, shared by the graphs of every batch size.

A recorded decode step (worker/cpu_graph.py) reads and writes tensors that the step itself allocated: each layer's
activations, the attention output, the logits. Kept alive one by one they cost the sum of every layer's
intermediates for every captured batch size: 1.15 MB a row on the bundled model, ~9 MB a row on a Llama-3-8B
shape, so 4.7 GB for graphs of 1 to 32 sequences (528 rows). But the calls always run in the recorded order, so a
tensor is live only from the first call that touches it to the last: tensors whose spans do not overlap can share
bytes, as a CUDA graph's private memory pool reuses what the captured pass freed. And graphs of different batch
sizes never run at once, so they all share one arena, as large as the largest graph's plan. The pointers the
recording holds are rewritten into the arena (`ArenaPlan.relocations`).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from dataclasses import dataclass

# PyTorch's CPU allocator aligns to 64 bytes; offsets in the arena keep that alignment, so a kernel's vector loop
# sees the same alignment (and sums in the same order) on a replay as on the recorded pass.
ALIGNMENT = 64


@dataclass(frozen=True)
class Allocation:
    """A block of memory that the recorded pass allocated."""

    base: int
    """Its address during the recorded pass."""
    nbytes: int
    """Its size in bytes."""


@dataclass
class ArenaPlan:
    """Where each allocation of one recorded pass lives in the arena, and the recorded pointers to rewrite."""

    size: int
    """Bytes the arena needs for this pass."""
    offsets: dict[int, int]
    """Allocation base (address during the recorded pass) -> its offset in the arena."""
    relocations: list[tuple[int, int, int]]
    """(call index, integer argument slot, offset in the arena): the pointer that slot must hold."""
    allocated: int
    """Bytes the pass allocated: what keeping each of its tensors would cost."""


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def plan_arena(
    call_pointers: Sequence[Sequence[tuple[int, int]]],
    allocations: Collection[Allocation],
    live_to_end: Collection[int] = (),
) -> ArenaPlan:
    """Places the allocations that the calls point into, sharing bytes between allocations whose spans of calls
    (first to last call that points into them) do not overlap.

    call_pointers: per recorded call, its (slot, pointer) arguments. live_to_end: bases of allocations read after
    the last call (the logits), live from the first call on."""
    ordered = sorted(allocations, key=lambda a: a.base)
    bases = [a.base for a in ordered]
    spans: dict[int, list[int]] = {}  # base -> [first call, last call]
    pending: list[tuple[int, int, int, int]] = []  # (call, slot, base, offset inside the allocation)
    for call, pointers in enumerate(call_pointers):
        for slot, pointer in pointers:
            index = bisect.bisect_right(bases, pointer) - 1
            if index < 0 or pointer >= ordered[index].base + ordered[index].nbytes:
                continue  # a weight, the KV cache, a static input buffer: stays where it is
            base = ordered[index].base
            span = spans.setdefault(base, [call, call])
            span[1] = call
            pending.append((call, slot, base, pointer - base))
    for base in live_to_end:
        spans.setdefault(base, [0, 0])[1] = len(call_pointers)
    sizes = {a.base: _aligned(a.nbytes) for a in ordered}
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    # Largest first, each at the lowest offset clear of the placed allocations whose spans overlap its own.
    for base in sorted(spans, key=lambda b: (-sizes[b], spans[b][0])):
        size, (first, last) = sizes[base], spans[base]
        offset = 0
        for other_offset, other_size, other_first, other_last in sorted(placed):
            if other_last < first or other_first > last:
                continue
            if offset + size <= other_offset:
                break
            offset = max(offset, other_offset + other_size)
        offsets[base] = offset
        placed.append((offset, size, first, last))
    size = max((offset + size for offset, size, _, _ in placed), default=0)
    relocations = [(call, slot, offsets[base] + inside) for call, slot, base, inside in pending]
    allocated = sum(a.nbytes for a in ordered)
    return ArenaPlan(size=size, offsets=offsets, relocations=relocations, allocated=allocated)
