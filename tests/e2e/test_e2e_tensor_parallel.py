"""The server's processes (engine core, tensor-parallel ranks) behind a real server: faults and multi-node.

A killed engine-core process or a killed rank fails the open streams with an error event, turns /health 503 and
takes every process of the server down; a SIGKILLed server leaves no engine process behind (whose ranks were
pinned to CPUs by VLLM_CPU_OMP_THREADS_BIND, as in vLLM); two `pagedserve serve` processes started separately with
`--nnodes 2` (node 1 headless, on loopback as two "nodes") serve together and give the greedy text of TP=1.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ServerProcess, all_gone, descendants, free_port, launch, watch_health

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]

TP2 = ("--tensor-parallel-size", "2")


def _rank_pid(server: ServerProcess, rank: int) -> int:
    for pid in descendants(server.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"pagedserve.worker.tp_worker" in argv and argv[argv.index(b"--rank") + 1] == str(rank).encode():
            return pid
    raise AssertionError(f"no rank {rank} worker under the server:\n{server.log()[-2000:]}")


def _core_pid(server: ServerProcess) -> int:
    for pid in descendants(server.process.pid):
        if b"pagedserve.engine.core_proc" in _cmdline(pid):
            return pid
    raise AssertionError(f"no engine-core process under the server:\n{server.log()[-2000:]}")


@pytest.mark.parametrize("victim", ["engine core", "rank 1"])
def test_killed_engine_process_fails_streams_turns_health_503_and_ends_every_process(
    tmp_path: Path, victim: str
) -> None:
    server = launch(tmp_path, *TP2)
    try:
        server.wait_ready()
        tree = [server.process.pid, *descendants(server.process.pid)]
        assert len(tree) == 4, tree  # server -> engine core -> rank 0, rank 1
        victim_pid = _core_pid(server) if victim == "engine core" else _rank_pid(server, 1)
        first_chunk = threading.Event()
        lines: list[str] = []

        def stream() -> None:
            body = {"prompt": "Go:", "max_tokens": 400, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                        first_chunk.set()

        client = threading.Thread(target=stream)
        client.start()
        watcher, health = watch_health(server)
        assert first_chunk.wait(60), server.log()[-2000:]
        subprocess.run(["kill", "-9", str(victim_pid)], check=True)
        client.join(60)
        assert not client.is_alive(), "the stream hung after a rank died"
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][6:])["error"]
        assert error["type"] == "server_error"
        assert server.process.wait(30) != 0
        watcher.join(10)
        assert health[0] == 200 and health[-1] == 503
        assert ("tensor-parallel" if victim == "rank 1" else "engine core process exited") in server.log()
        assert all_gone(tree, 10), f"left behind: {[p for p in tree if Path(f'/proc/{p}').exists()]}"
    finally:
        if server.process.poll() is None:
            server.process.kill()


def _thread_masks(pid: int) -> set[str]:
    masks = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        masks |= {
            line.split()[1]
            for line in status.read_text().splitlines()
            if line.startswith("Cpus_allowed_list")
        }
    return masks


def test_engine_processes_carry_their_cpu_settings_and_die_with_a_sigkilled_server(tmp_path: Path) -> None:
    # vLLM's CPU binding, one list per rank: rank 0 on the last CPU, rank 1 on the first (both the same on 1 CPU).
    cpus = sorted(os.sched_getaffinity(0))
    server = launch(tmp_path, *TP2, env={"VLLM_CPU_OMP_THREADS_BIND": f"{cpus[-1]}|{cpus[0]}"})
    try:
        server.wait_ready()
        workers = descendants(server.process.pid)
        assert len([p for p in workers if b"tp_worker" in _cmdline(p)]) == 2
        assert len([p for p in workers if b"core_proc" in _cmdline(p)]) == 1
        # Every engine process spins briefly at OpenMP barriers (envs.engine_process_env), unless the user chose.
        engines = [p for p in workers if b"tp_worker" in _cmdline(p) or b"core_proc" in _cmdline(p)]
        assert all(
            b"GOMP_SPINCOUNT=1000" in Path(f"/proc/{p}/environ").read_bytes().split(b"\0") for p in engines
        )
        assert _complete(server)["text"]  # the ranks' OpenMP teams exist now
        assert _thread_masks(_rank_pid(server, 0)) == {str(cpus[-1])}
        assert _thread_masks(_rank_pid(server, 1)) == {str(cpus[0])}
        assert server.log().count("; 1 threads") == 2, server.log()[-3000:]
        server.process.kill()
        server.process.wait(10)
        assert all_gone(workers, 10), "an engine process outlived its server"
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_an_idle_server_outlives_its_ranks_collective_timeout(tmp_path: Path) -> None:
    """Between steps ranks 1.. wait in the step's broadcast, and gloo fails a collective that waits longer than the
    group's timeout (PAGEDSERVE_TP_TIMEOUT_S, 600 s by default: a server idle for 10 minutes lost its ranks and
    died). Rank 0 broadcasts a keep-alive every tenth of the timeout while the engine is idle, so a server idle for
    three times its (here 5 s) timeout still serves, with the greedy text it gave before. A rank that dies while
    the server is idle turns /health 503 by itself (the idle engine checks its workers), not at the next request."""
    server = launch(tmp_path, *TP2, env={"PAGEDSERVE_TP_TIMEOUT_S": "5"})
    try:
        server.wait_ready()
        before = _complete(server)["text"]
        time.sleep(15)
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert _complete(server)["text"] == before
        assert "Timed out" not in server.log()
        os.kill(_rank_pid(server, 1), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/health", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "a rank died while idle and /health still says 200"
            time.sleep(0.2)
        assert "rank 1" in server.log() or "tensor-parallel worker failure" in server.log()
    finally:
        server.terminate()


def _complete(server: ServerProcess, **extra: Any) -> dict[str, Any]:
    body = {"prompt": "The three laws of robotics are", "max_tokens": 24, "temperature": 0, **extra}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def test_two_nodes_serve_together_and_match_tp1(tmp_path: Path, server: ServerProcess) -> None:
    port = str(free_port())
    nodes = ("--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port)
    first = launch(tmp_path, *TP2, *nodes, "--node-rank", "0")
    second = launch(tmp_path, *TP2, *nodes, "--node-rank", "1", "--headless")
    try:
        first.wait_ready()
        assert second.process.poll() is None
        assert len([p for p in descendants(first.process.pid) if b"tp_worker" in _cmdline(p)]) == 1
        assert len([p for p in descendants(second.process.pid) if b"tp_worker" in _cmdline(p)]) == 1
        single = _complete(server, logprobs=2)
        both = _complete(first)
        tokens = single["logprobs"]["tokens"]
        text = ""
        for position, token in enumerate(tokens):  # equal up to a near tie of TP=1 (an all-reduce's rounding)
            if not both["text"].startswith(text + token):
                top = sorted(single["logprobs"]["top_logprobs"][position].values(), reverse=True)
                assert math.isclose(top[0], top[1], abs_tol=1e-3), (single["text"], both["text"])
                break
            text += token
        assert first.terminate() == 0
        assert second.process.wait(30) == 0  # rank 0 told its ranks to stop
    finally:
        for process in (first, second):
            if process.process.poll() is None:
                process.process.kill()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""
