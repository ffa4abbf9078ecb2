"""The engine-core process: `python -m pagedserve.engine.core_proc --conn-fd FD --parent-pid PID`.

Started by `EngineCoreClient` (engine/core_client.py). It reads `StartCore` (the engine config) from its socket,
builds the `EngineCore` (and so the tensor-parallel workers, its children), answers `CoreReady`, then loops: apply
every message that has arrived (new requests, aborts, stop-string finishes), run one step when there is work, send
its `CoreOutputs`. An idle core checks its workers (a dead tensor-parallel rank fails it at once) and sends a
`Heartbeat` four times a second so that the front end can tell idle from wedged. A failing step sends `CoreFailed` with the traceback and exits 1; the process exits when its parent does.

Fault injection for tests: engine/faults.py (read once at start).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing.connection
import os
import traceback

from pagedserve import envs
from pagedserve.engine import core_messages as msg
from pagedserve.engine.core import EngineCore
from pagedserve.engine.faults import StepFaults
from pagedserve.parent_watch import exit_with_parent

logger = logging.getLogger("pagedserve")

# An idle core's heartbeat period: the server's readiness window (--ready-stall-seconds >= 1) must be longer.
HEARTBEAT_S = 0.25


def serve_core(conn: multiprocessing.connection.Connection) -> None:
    start = msg.decode_to_core(conn.recv_bytes())
    if not isinstance(start, msg.StartCore):
        raise RuntimeError(f"expected StartCore, got {type(start).__name__}")
    try:
        faults = StepFaults()
        core = EngineCore(start.config)
    except Exception as error:  # noqa: BLE001 - a refused configuration: the front end reports it
        logger.error("Engine core start-up failed: %s: %s", type(error).__name__, error)
        _send_failure(conn, error)
        os._exit(1)
    conn.send_bytes(msg.encode(msg.CoreReady(core.info, core.worker_pids)))
    _loop(conn, core, faults)
    core.shutdown()  # after a failure the process exits at once instead: its workers follow their parent


def _send_failure(conn: multiprocessing.connection.Connection, error: BaseException) -> None:
    failure = msg.CoreFailed(type(error).__name__, str(error), traceback.format_exc())
    try:
        conn.send_bytes(msg.encode(failure))
    except OSError:
        pass


def _loop(conn: multiprocessing.connection.Connection, core: EngineCore, faults: StepFaults) -> None:
    num_steps = 0
    flush_stats = False  # aborts happened: one step publishes their stats and gauges even if now idle
    while True:
        busy = core.has_unfinished_requests() or flush_stats
        if conn.poll(0 if busy else HEARTBEAT_S):
            while True:  # everything that has arrived, in order, before the next step
                message = msg.decode_to_core(conn.recv_bytes())
                if isinstance(message, msg.EngineCoreRequest):
                    core.add_request(message)
                elif isinstance(message, msg.Abort):
                    core.abort_requests(message.request_ids)
                    flush_stats = True
                elif isinstance(message, msg.FinishSequences):
                    core.finish_sequences(message.seq_ids)
                elif isinstance(message, msg.GrammarTokenizer):
                    core.set_grammar_tokenizer(message.definition, message.eos_token_ids)
                elif isinstance(message, msg.Shutdown):
                    return
                if not conn.poll(0):
                    break
        elif not busy:
            core.check_health()  # a rank that died while idle fails the core now, not at the next request
            conn.send_bytes(msg.encode(msg.Heartbeat()))
            continue
        if not core.has_unfinished_requests() and not flush_stats:
            continue
        flush_stats = False
        num_steps += 1
        faults.before_step(num_steps)
        conn.send_bytes(msg.encode(core.step()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pagedserve.engine.core_proc")
    parser.add_argument("--conn-fd", type=int, required=True, help="the front end's socket")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    logging.basicConfig(
        level=envs.logging_level(), format="%(levelname)s %(asctime)s [pagedserve core] %(message)s"
    )
    conn = multiprocessing.connection.Connection(args.conn_fd)
    try:
        serve_core(conn)
    except (EOFError, ConnectionError):
        logger.error("Engine core: the front end closed the connection")  # the server is gone
        os._exit(1)
    except BaseException as error:  # noqa: BLE001 - tell the front end why, then exit non-zero
        logger.error("Engine loop died:\n%s", traceback.format_exc())
        _send_failure(conn, error)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
