"""The shared-memory collectives of CPU tensor-parallel ranks (distributed/shm_collectives.py), run by real rank
processes that joined a real gloo group: all-reduce sums in rank order (the same bits on every rank, float32 and
bfloat16), all-gathers in rank order, tensors larger than a slot in chunks, many calls of both in a row (the two
slot sets reused), recorded calls replayed between eager ones, the step's broadcast (every size; sleeping while it
waits), the fallback to gloo, no file left in /dev/shm, and a clear error when a rank never arrives or rank 0 dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from pagedserve.ops import build

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(build.load() is None, reason="needs the C kernels (a C compiler)"),
]

RANK = """
import json, os, sys
from datetime import timedelta
import torch
import torch.distributed as dist
from pagedserve.distributed import shm_collectives as shm

rank, world, port, capacity, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
# 2 s where a rank is meant to be missing; elsewhere room for a loaded machine to deschedule a rank.
comm = shm.setup_shm_collectives(store, rank, world, timeout_s=2.0 if mode == "absent" else 120.0, capacity=capacity)
result = {"shm": comm is not None, "mismatches": [], "calls": 0}


def finish():
    # As the TP worker does: os._exit, not interpreter teardown, which can abort in gloo's threads
    # ("terminate called without an active exception").
    print(json.dumps(result), flush=True)
    os._exit(0)


if mode == "absent" and rank == world - 1:
    finish()  # never takes part: the others time out
if mode == "absent":
    try:
        comm.all_reduce(torch.ones(8))
    except RuntimeError as error:
        result["error"] = str(error)
    finish()


def part(r, call, n, dtype):
    return torch.randn(n, generator=torch.Generator().manual_seed(1000 * call + r)).mul(3).to(dtype)


def rank_order_sum(call, n):
    expected = part(0, call, n, torch.float32)
    for r in range(1, world):
        expected = expected + part(r, call, n, torch.float32)
    return expected


if mode == "broadcast":
    # The step broadcast: payloads of every size (empty, a buffer's worth, past it: announced here, sent over gloo),
    # interleaved with all-reduces; once rank 0 waits 2 s first, and the others must sleep, not spin, meanwhile.
    import resource

    def cpu_s():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def payload(call, n):
        return bytes((call * 7 + i) % 251 for i in range(n))

    sizes = [0, 1, 100, shm.BROADCAST_BYTES, shm.BROADCAST_BYTES + 1, 5, 3000] * 3
    for call, n in enumerate(sizes):
        if call == 4 and rank == 0:
            import time

            time.sleep(2.0)
        before = cpu_s()
        got = comm.broadcast_bytes(payload(call, n) if rank == 0 else None)
        if call == 4 and rank != 0:
            result["waited_cpu_s"] = cpu_s() - before
        if got != payload(call, n):
            result["mismatches"].append([call, n])
        if not torch.equal(comm.all_reduce(torch.ones(3)), torch.full((3,), float(world))):
            result["mismatches"].append([call, "sum"])
        result["calls"] += 1
    finish()


if mode == "sender_dies":
    if rank == 0:
        finish()  # exits without broadcasting: the others must not wait forever
    try:
        comm.broadcast_bytes(None)
    except RuntimeError as error:
        result["error"] = str(error)
    finish()


if mode == "replay":
    # As a decode graph does (worker/cpu_graph.py): record the calls once, then replay them on new contents of the
    # same tensors, with eager calls in between that advance the call numbers too.
    from pagedserve.ops.recording import KernelRecording

    n = capacity + 3  # two chunks
    x, y, recording = torch.zeros(n), torch.zeros(2, 5), KernelRecording()
    with recording.active():
        comm.all_reduce(x)
        gathered = comm.all_gather(y)
    result["replayed"] = recording.program().names
    program = recording.program()
    for call in range(1, 21):
        x.copy_(part(rank, call, n, torch.float32))
        y.copy_(part(rank, call, 10, torch.float32).view(2, 5))
        program.run()
        gathers = torch.stack([part(r, call, 10, torch.float32).view(2, 5) for r in range(world)])
        if not (torch.equal(x, rank_order_sum(call, n)) and torch.equal(gathered, gathers)):
            result["mismatches"].append(call)
        if call % 3 == 0:
            z = part(rank, 100 + call, 7, torch.float32)
            if not torch.equal(comm.all_reduce(z), rank_order_sum(100 + call, 7)):
                result["mismatches"].append(-call)
        result["calls"] += 1
    finish()


for call, n in enumerate([1, capacity - 1, capacity, capacity + 1, 3 * capacity + 7, 5] * 8):
    for dtype in (torch.float32, torch.bfloat16):
        x = part(rank, call, n, dtype)
        (comm.all_reduce(x) if comm is not None else dist.all_reduce(x))
        expected = part(0, call, n, dtype).float()
        for r in range(1, world):
            expected = expected + part(r, call, n, dtype).float()
        if not torch.equal(x, expected.to(dtype)):
            result["mismatches"].append([call, n, str(dtype), (x.float() - expected).abs().max().item()])
        result["calls"] += 1
    # Interleaved with the sums: a gather of a 2-D tensor (the logits' shape), bytes as they are.
    x = part(rank, call, 2 * n, torch.float32).view(2, n)
    if comm is not None:
        gathered = comm.all_gather(x)
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        gathered = torch.stack(parts)
    expected = torch.stack([part(r, call, 2 * n, torch.float32).view(2, n) for r in range(world)])
    if not torch.equal(gathered, expected):
        result["mismatches"].append([call, n, "gather"])
    result["calls"] += 1
finish()
"""


def _run_group(world: int, capacity: int, mode: str = "sum", env: dict[str, str] | None = None) -> list[dict]:
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    environment = {**os.environ, **(env or {})}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(r), str(world), str(store.port), str(capacity), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )  # fmt: skip
        for r in range(world)
    ]
    results = []
    for process in ranks:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _tp_files() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("pagedserve-tp-*")}


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_rank_order_sum_in_chunks_and_in_a_row(world: int) -> None:
    before = _tp_files()
    results = _run_group(world, capacity=1000)
    assert all(r["shm"] for r in results)
    assert all(r["calls"] == 144 and r["mismatches"] == [] for r in results), results
    assert _tp_files() == before  # rank 0 unlinked the region once every rank had mapped it


def test_recorded_calls_replay_between_eager_ones() -> None:
    """A decode graph under tensor parallelism replays the collectives it recorded (ops/csrc/replay.c)."""
    results = _run_group(2, capacity=1000, mode="replay")
    assert all(r["replayed"] == ["shm_all_reduce", "shm_all_gather"] for r in results), results
    assert all(r["calls"] == 20 and r["mismatches"] == [] for r in results), results


@pytest.mark.parametrize("world", [2, 3])
def test_step_broadcast_carries_every_size_and_sleeps_while_waiting(world: int) -> None:
    """Every rank gets rank 0's bytes, the ones past the buffer too (over gloo); a rank waiting 2 s for rank 0 used
    well under a second of CPU (it sleeps on a futex after a short spin; a spinning wait would use ~2 s)."""
    results = _run_group(world, capacity=1000, mode="broadcast")
    assert all(r["calls"] == 21 and r["mismatches"] == [] for r in results), results
    assert all(r["waited_cpu_s"] < 0.5 for r in results[1:]), results


def test_a_broadcast_from_a_dead_rank_0_is_an_error_not_a_hang() -> None:
    results = _run_group(2, capacity=1000, mode="sender_dies")
    assert results[1]["error"] == "tensor-parallel step broadcast: rank 0 is gone"


def test_disabled_falls_back_to_gloo() -> None:
    results = _run_group(2, capacity=1000, env={"PAGEDSERVE_DISABLE_SHM_COLLECTIVES": "1"})
    assert [r["shm"] for r in results] == [False, False]
    assert all(r["calls"] == 144 for r in results)


def test_a_rank_that_never_arrives_is_an_error_not_a_hang() -> None:
    results = _run_group(2, capacity=1000, mode="absent")
    assert "a rank did not arrive within 2 s" in results[0]["error"]
