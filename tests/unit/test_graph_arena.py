"""The CPU decode graphs' arena plan (worker/graph_arena.py): tensors share bytes only where no call uses both."""

from __future__ import annotations

import random

from pagedserve.worker.graph_arena import ALIGNMENT, Allocation, plan_arena

WEIGHT = 0x7F00_0000_0000  # an address outside every allocation (a weight, the KV cache)


def test_tensors_used_by_separate_calls_share_bytes_and_overlapping_ones_do_not() -> None:
    a, b, c = Allocation(0x1000, 256), Allocation(0x2000, 256), Allocation(0x3000, 128)
    # call 0 writes a; call 1 reads a, writes b; call 2 reads b, writes c: a and c never live together.
    calls = [[(0, WEIGHT), (1, a.base)], [(0, a.base), (1, b.base)], [(0, b.base), (1, c.base)]]
    plan = plan_arena(calls, [a, b, c])
    assert plan.offsets[a.base] != plan.offsets[b.base]
    assert plan.offsets[c.base] == plan.offsets[a.base]
    assert plan.size == 512 and plan.allocated == 640


def test_pointers_inside_a_tensor_keep_their_place_in_it_and_others_stay() -> None:
    a = Allocation(0x1000, 1024)
    calls = [[(0, a.base + 256), (1, WEIGHT), (2, a.base)], [(3, a.base + 1023)]]
    plan = plan_arena(calls, [a])
    offset = plan.offsets[a.base]
    assert sorted(plan.relocations) == [(0, 0, offset + 256), (0, 2, offset), (1, 3, offset + 1023)]
    # The address just past a tensor is not in it.
    assert plan_arena([[(0, a.base + 1024)]], [a]).relocations == []


def test_the_logits_live_to_the_end_and_unused_tensors_take_nothing() -> None:
    logits, late, unused = Allocation(0x1000, 64), Allocation(0x2000, 64), Allocation(0x3000, 4096)
    calls = [[(0, logits.base)], [(0, WEIGHT)], [(0, late.base)]]
    plan = plan_arena(calls, [logits, late, unused], live_to_end=[logits.base])
    assert plan.offsets[logits.base] != plan.offsets[late.base]  # written by call 0, read after call 2
    assert unused.base not in plan.offsets
    assert plan_arena(calls, [logits, late]).size == ALIGNMENT  # without: call 2 may reuse its bytes


def test_offsets_are_aligned() -> None:
    allocations = [Allocation(0x1000 * (i + 1), 3 + 17 * i) for i in range(6)]
    calls = [[(0, a.base) for a in allocations]]
    plan = plan_arena(calls, allocations)
    assert all(offset % ALIGNMENT == 0 for offset in plan.offsets.values())
    assert plan.size == sum(-(-a.nbytes // ALIGNMENT) * ALIGNMENT for a in allocations)


def test_random_programs_never_share_bytes_between_tensors_live_at_once() -> None:
    rng = random.Random(5)

    def inside(allocation: Allocation) -> int:
        return allocation.base + rng.randrange(0, allocation.nbytes)

    for _ in range(200):
        allocations = [
            Allocation(0x10000 * (i + 1), rng.randrange(1, 5000)) for i in range(rng.randrange(1, 30))
        ]
        calls = [
            [(slot, inside(rng.choice(allocations))) for slot in range(rng.randrange(0, 4))]
            for _ in range(rng.randrange(1, 40))
        ]
        plan = plan_arena(calls, allocations)
        spans: dict[int, list[int]] = {}
        for call, pointers in enumerate(calls):
            for _, pointer in pointers:
                base = pointer - pointer % 0x10000
                spans.setdefault(base, [call, call])[1] = call
        assert set(plan.offsets) == set(spans)
        sizes = {a.base: a.nbytes for a in allocations}
        for x in spans:
            assert plan.offsets[x] + sizes[x] <= plan.size
            for y in spans:
                live_together = x != y and spans[x][0] <= spans[y][1] and spans[y][0] <= spans[x][1]
                if live_together:
                    apart = (
                        plan.offsets[x] + sizes[x] <= plan.offsets[y]
                        or plan.offsets[y] + sizes[y] <= plan.offsets[x]
                    )
                    assert apart
        assert plan.size <= sum(-(-sizes[x] // ALIGNMENT) * ALIGNMENT for x in spans)
