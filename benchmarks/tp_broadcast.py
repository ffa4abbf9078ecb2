"""The tensor-parallel step broadcast alone: rank 0's message (2 KB, a decode step's size) to a second rank over
gloo (two broadcasts: its length, then its bytes) and through shared memory (distributed/shm_collectives.py), each
followed by one shared-memory all-reduce of 576 floats so the ranks stay in step. Microseconds a round, best of
`--rounds` runs of 2 000 (after 200 to warm up); two rank processes on this machine.

    .venv/bin/python benchmarks/tp_broadcast.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

PAYLOAD = bytes(range(256)) * 8


def _rank(rank: int, port: int, mode: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from pagedserve.distributed import parallel_state

    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=timedelta(seconds=60))
    parallel_state.init_tensor_parallel(store, rank, 2, "gloo", 60.0)
    shm = parallel_state._SHM
    assert shm is not None, "the shared-memory collectives did not set up"
    x = torch.ones(576)

    def one() -> None:
        if mode == "shm":
            shm.broadcast_bytes(PAYLOAD if rank == 0 else None)
        else:  # the gloo path of parallel_state.broadcast_bytes
            parallel_state._SHM = None
            parallel_state.broadcast_bytes(PAYLOAD if rank == 0 else None)
            parallel_state._SHM = shm
        shm.all_reduce(x)

    for _ in range(200):
        one()
    started = time.perf_counter()
    for _ in range(2000):
        one()
    if rank == 0:
        print(f"{(time.perf_counter() - started) / 2000 * 1e6:.1f}", flush=True)
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(mode: str) -> float:
    port = _free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, __file__, "--child", mode, "--port", str(port)]
    other = subprocess.Popen([*command, "--rank", "1"], env=env, stdout=subprocess.DEVNULL)
    first = subprocess.run([*command, "--rank", "0"], env=env, capture_output=True, text=True, timeout=300)
    other.wait(60)
    return float(first.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _rank(args.rank, args.port, args.child)
        return
    best: dict[str, list[float]] = {"gloo": [], "shm": []}
    for _ in range(args.rounds):
        for mode in best:
            best[mode].append(_run(mode))
    for mode, runs in best.items():
        print(f"{mode}: {min(runs):.1f} us a round (runs: {', '.join(f'{r:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
