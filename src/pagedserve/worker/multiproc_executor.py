"""One worker process per tensor-parallel rank; the engine talks to rank 0 only.

Workers are `python -m pagedserve.worker.tp_worker` processes (not multiprocessing children: nothing re-imports the
user's main module, and a rank on another node starts the same way). They join the process group through a
TCPStore the engine hosts on a free loopback port; rank 0 then gets the `RunnerSpec` from the engine and broadcasts
it, and each rank loads its own slices of the weights. Each step the engine sends rank 0 the `SchedulerOutput`
(msgspec over a socket pair); rank 0 broadcasts the bytes over the process group, every rank runs the same step
(the collectives need all of them) and rank 0 sends the `ModelRunnerOutput` back. Sampling runs on every rank with
the same inputs, but only rank 0's tokens are used, so ranks can never disagree.

Faults: the engine waits on rank 0's socket and on every worker's pidfd, so a dead rank is an error at the next
step, not a hang; a rank whose collective fails (a peer died) exits non-zero; a worker exits when the engine process
does (its parent pid changes: also after a SIGKILL of the engine).
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import time
import weakref
from datetime import timedelta
from typing import Any

from pagedserve import cpu_placement, envs
from pagedserve.config import ParallelConfig
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.worker import tp_messages as msg
from pagedserve.worker.device import resolve_device
from pagedserve.worker.executor import RunnerInfo, RunnerSpec
from pagedserve.worker.runner_output import ModelRunnerOutput

logger = logging.getLogger("pagedserve")

# How often a dead worker is looked for while the engine waits.
_POLL_S = 0.5


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker exited or failed: the replica cannot continue."""


class _Worker:
    def __init__(self, rank: int, process: subprocess.Popen) -> None:
        self.rank = rank
        self.process = process
        self.pidfd = os.pidfd_open(process.pid)

    def fileno(self) -> int:  # readable once the process has exited (multiprocessing.connection.wait)
        return self.pidfd

    def describe(self) -> str:
        return f"tensor-parallel rank {self.rank} (pid {self.process.pid}) exited with code {self.process.poll()}"


def start_worker(
    rank: int,
    size: int,
    store: str,
    device: str,
    local_rank: int,
    conn_fd: int | None = None,
    custom_all_reduce: bool = True,
) -> _Worker:
    """Starts rank `rank` of `size` as a child of this process; `store` is the group's HOST:PORT.
    custom_all_reduce False (--disable-custom-all-reduce): the CPU ranks reduce over gloo, not shared memory."""
    command = [
        sys.executable, "-m", "pagedserve.worker.tp_worker", "--rank", str(rank), "--size", str(size),
        "--store", store, "--parent-pid", str(os.getpid()), "--device", device, "--local-rank", str(local_rank),
    ]  # fmt: skip
    if conn_fd is not None:
        command += ["--conn-fd", str(conn_fd)]
    env = envs.engine_process_env()
    if not custom_all_reduce:
        env["PAGEDSERVE_DISABLE_SHM_COLLECTIVES"] = "1"
    process = subprocess.Popen(command, pass_fds=() if conn_fd is None else (conn_fd,), env=env)
    return _Worker(rank, process)


class MultiprocExecutor:
    def __init__(self, spec: RunnerSpec, parallel: ParallelConfig) -> None:
        """Starts this node's ranks (all of them on one node); other nodes' ranks join from their own `pagedserve
        serve --headless` (run_headless_node)."""
        import torch.distributed as dist

        self.size = parallel.tensor_parallel_size
        self._closed = False
        # One node: port 0, the kernel picks a free one (the workers get it on their command line). Several: the
        # address every node was given.
        host, port = (
            ("127.0.0.1", 0) if parallel.nnodes == 1 else (parallel.master_addr, parallel.master_port)
        )
        timeout = timedelta(seconds=msg.JOIN_TIMEOUT_S)
        self.store = dist.TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timeout)
        address = f"{host}:{self.store.port}"
        ours, theirs = socket.socketpair()
        self.conn = multiprocessing.connection.Connection(ours.detach())
        self.workers: list[_Worker] = []
        # Also when the executor is dropped without shutdown() (an LLM object going away), and at exit.
        self._finalizer = weakref.finalize(self, _stop_workers, self.conn, self.workers)
        device = resolve_device(spec.model.device).type
        custom = not parallel.disable_custom_all_reduce
        try:
            self.workers.append(start_worker(0, self.size, address, device, 0, theirs.fileno(), custom))
            theirs.close()
            for rank in range(1, parallel.ranks_per_node):
                self.workers.append(start_worker(rank, self.size, address, device, rank, None, custom))
            self.conn.send_bytes(msg.encode(msg.Load(spec)))
            ready = self._receive()
            if not isinstance(ready, msg.Ready):
                raise WorkerDiedError(f"rank 0 sent {type(ready).__name__} instead of Ready")
        except BaseException:
            self.shutdown()
            raise
        self.info: RunnerInfo = ready.info
        logger.info("tensor parallel: %d ranks, this node's worker pids %s", self.size, self.pids)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        if self._closed:
            raise WorkerDiedError("the tensor-parallel workers were shut down")
        try:
            self.conn.send_bytes(msg.encode(msg.Step(scheduler_output)))
        except OSError as error:
            raise self._died(f"could not reach rank 0 ({error})") from error
        message = self._receive()
        if not isinstance(message, msg.Result):
            raise self._died(f"rank 0 sent {type(message).__name__} instead of a step result")
        return message.output

    def check_health(self) -> None:
        """Between steps: WorkerDiedError when a rank has died or reported a failure since the last step (the idle
        engine asks four times a second, so /health turns 503 without waiting for a request)."""
        if self._closed:
            raise WorkerDiedError("the tensor-parallel workers were shut down")
        if multiprocessing.connection.wait([self.conn, *self.workers], timeout=0):
            message = self._receive()
            raise self._died(f"rank 0 sent {type(message).__name__} between steps")

    def _receive(self) -> Any:
        while True:
            ready = multiprocessing.connection.wait([self.conn, *self.workers], timeout=_POLL_S)
            if self.conn in ready:
                try:
                    message = msg.decode_for_engine(self.conn.recv_bytes())
                except (EOFError, OSError) as error:
                    raise self._died("rank 0 closed its connection") from error
                if isinstance(message, msg.Failed):
                    raise self._died(f"rank {message.rank} failed:\n{message.error}")
                return message
            for worker in ready:
                raise self._died(worker.describe())  # type: ignore[union-attr]

    def _died(self, reason: str) -> WorkerDiedError:
        self.shutdown()
        return WorkerDiedError(f"tensor-parallel worker failure: {reason}")

    def shutdown(self) -> None:
        """Stops every worker: asks rank 0 (which tells the others), then kills what is left after 5 s."""
        self._closed = True
        self._finalizer()


def _stop_workers(conn: multiprocessing.connection.Connection, workers: list[_Worker]) -> None:
    try:
        conn.send_bytes(msg.encode(msg.Shutdown()))
    except OSError:
        pass
    deadline = time.monotonic() + 5.0
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(5.0)
        os.close(worker.pidfd)
    conn.close()


def run_headless_node(parallel: ParallelConfig, device: str) -> int:
    """A node other than 0: runs its ranks until they exit (the engine on node 0 stops them); non-zero if any
    failed. The ranks get the model from rank 0's broadcast, so this node needs no model flags beyond the files."""
    per_node = parallel.ranks_per_node
    custom = not parallel.disable_custom_all_reduce
    if device == "cpu":
        cpu_placement.check_binding(per_node)
    first = parallel.node_rank * per_node
    address = f"{parallel.master_addr}:{parallel.master_port}"
    workers = [
        start_worker(first + i, parallel.tensor_parallel_size, address, device, i, None, custom)
        for i in range(per_node)
    ]
    logger.info("headless node %d: ranks %d-%d, pids %s", parallel.node_rank, first, first + per_node - 1,
                [w.process.pid for w in workers])  # fmt: skip
    code = 0
    pending = list(workers)
    while pending:
        for worker in multiprocessing.connection.wait(pending):
            pending.remove(worker)  # type: ignore[arg-type]
            status = worker.process.wait()  # type: ignore[union-attr]
            if status != 0:
                code = 1
                logger.error(worker.describe())  # type: ignore[union-attr]
                for other in pending:  # one rank down: the group is broken
                    other.process.kill()  # type: ignore[union-attr]
    return code
