"""A tensor-parallel rank: `python -m pagedserve.worker.tp_worker --rank R --size N --store HOST:PORT ...`.

Started by `MultiprocExecutor` (worker/multiproc_executor.py, which documents the protocol). Rank 0 reads the
engine's messages from `--conn-fd` and broadcasts them; every rank runs each step.
"""

from __future__ import annotations

import argparse
import logging
import os
import traceback
from datetime import timedelta

from pagedserve import cpu_placement, envs
from pagedserve.parent_watch import exit_with_parent
from pagedserve.worker import tp_messages as msg

logger = logging.getLogger("pagedserve")


def _serve(args: argparse.Namespace, host: str, port: int, conn) -> None:  # noqa: ANN001
    import torch
    import torch.distributed as dist

    from pagedserve.distributed import parallel_state
    from pagedserve.worker.executor import build_runner, runner_info

    if args.device == "cuda":
        torch.cuda.set_device(args.local_rank)
    store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=msg.JOIN_TIMEOUT_S))
    # CPU tensors (the engine's messages, the gloo path) over gloo; CUDA tensors over NCCL.
    backend = "cpu:gloo,cuda:nccl" if args.device == "cuda" else "gloo"
    timeout_s = envs.tp_timeout_s()
    parallel_state.init_tensor_parallel(store, args.rank, args.size, backend, timeout_s)
    # The other ranks wait for each step in a broadcast, which gloo fails after the group's timeout: an idle server
    # would lose its ranks after 10 minutes. Rank 0 sends them a keep-alive every tenth of it instead.
    keep_alive_s = timeout_s / 10
    keep_alive = msg.encode(msg.KeepAlive())

    def receive() -> msg.Load | msg.Step | msg.Shutdown:
        while True:
            payload = None
            if conn is not None:
                try:
                    payload = conn.recv_bytes() if conn.poll(keep_alive_s) else keep_alive
                except (EOFError, OSError):
                    payload = msg.encode(msg.Shutdown())  # the engine is gone: stop the other ranks too
            message = msg.decode_for_worker(parallel_state.broadcast_bytes(payload))
            if not isinstance(message, msg.KeepAlive):
                return message

    load = receive()
    if not isinstance(load, msg.Load):
        return
    runner = build_runner(load.spec)
    info = runner_info(runner)
    totals = torch.tensor([info.weight_bytes, info.kv_cache_bytes], dtype=torch.int64)
    parallel_state.all_reduce(totals)
    info.weight_bytes, info.kv_cache_bytes = (int(v) for v in totals.tolist())
    if conn is not None:
        conn.send_bytes(msg.encode(msg.Ready(info)))
    while True:
        message = receive()
        if not isinstance(message, msg.Step):
            break
        output = runner.execute(message.scheduler_output)
        if conn is not None:
            conn.send_bytes(msg.encode(msg.Result(output)))
    parallel_state.destroy_tensor_parallel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pagedserve.worker.tp_worker")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--store", required=True, help="HOST:PORT of the TCPStore rank 0's engine hosts")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--conn-fd", type=int, default=None, help="rank 0: the engine's socket")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--local-rank", type=int, default=0, help="this rank's GPU on its node")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    logging.basicConfig(
        level=envs.logging_level(), format=f"%(asctime)s tp{args.rank} %(levelname)s %(message)s"
    )
    if args.device == "cpu":  # before this rank's OpenMP team starts: its threads take the mask then
        cpu_placement.bind_rank(args.local_rank)
    host, _, port = args.store.rpartition(":")
    # gloo binds the interface the host name resolves to; for a group on loopback that must be loopback.
    if host in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    conn = None
    if args.conn_fd is not None:
        import multiprocessing.connection

        conn = multiprocessing.connection.Connection(args.conn_fd)
    try:
        _serve(args, host, int(port), conn)
    except BaseException:  # noqa: BLE001 - tell the engine why, then exit non-zero
        error = traceback.format_exc()
        logger.error("rank %d failed:\n%s", args.rank, error)
        if conn is not None:
            try:
                conn.send_bytes(msg.encode(msg.Failed(args.rank, error)))
            except OSError:
                pass
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
