"""EngineCoreClient: the server's `EngineClient`, with the engine core in its own process (vLLM V1's layout).

The API server process keeps the front end on its event loop: admission (tokenizer, validation), detokenization,
stop strings and output building. The core (scheduler, model runner, tensor-parallel workers) runs in
`python -m pagedserve.engine.core_proc`, so model steps and the event loop never take turns on one GIL. They talk
over a socket pair in length-prefixed msgspec frames (engine/core_messages.py; the framing of
multiprocessing.connection, which the core side uses).

Faults: the core's connection closing (it exited, however) or a `CoreFailed` frame kills the engine: every open
stream gets `EngineDeadError`, new requests are refused and `on_dead` runs (the server exits non-zero). An idle core
sends heartbeats, so `stall_timeout` seconds without any frame means a wedged step: the core is killed and treated
as dead. The core exits when this process does, also after a SIGKILL (it watches its parent pid), and its
tensor-parallel workers exit with it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.connection
import os
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from pagedserve import envs
from pagedserve.config import EngineConfig
from pagedserve.core.stats import EngineStats, FinishedRequestStats
from pagedserve.engine import core_messages as msg
from pagedserve.engine.chat import ChatOptions
from pagedserve.engine.input_processor import (
    InputProcessor,
    generation_defaults_for,
    load_tokenizer_for,
    lora_checker_for,
)
from pagedserve.engine.output_processor import OutputProcessor
from pagedserve.engine.prompts import PromptInput
from pagedserve.engine.streams import OutputQueue, RequestAbortedError, next_output
from pagedserve.errors import EngineDeadError, InvalidRequestError
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import EngineInfo, RequestOutput
from pagedserve.sampling_params import SamplingParams

logger = logging.getLogger("pagedserve")

# How often start-up looks for a core that died while loading.
_START_POLL_S = 0.5


class EngineCoreDiedError(RuntimeError):
    """The engine-core process exited, failed, or stopped answering."""


class EngineCoreClient:
    def __init__(
        self,
        config: EngineConfig,
        stall_timeout: float | None = None,
        on_dead: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Starts the core process and waits until it has loaded the model (blocking, seconds: call it off the event
        loop). Raises what made the core fail to start (ValueError for a bad configuration)."""
        self.stall_timeout = stall_timeout
        self.on_dead = on_dead
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "pagedserve.engine.core_proc",
                   "--conn-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid())]  # fmt: skip
        self._process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=envs.engine_process_env())
        theirs.close()
        # If this object goes away without shutdown() (a failed start, an exception), the core goes with it.
        self._finalizer = weakref.finalize(self, _kill, self._process)
        try:
            conn = multiprocessing.connection.Connection(os.dup(ours.fileno()))
            try:
                conn.send_bytes(msg.encode(msg.StartCore(config)))
                # The core loads the weights while this process loads the tokenizer.
                tokenizer, source = load_tokenizer_for(config)
                generation_defaults = generation_defaults_for(config, source)
                ready = self._wait_ready(conn)
            finally:
                conn.close()
        except BaseException:
            ours.close()
            self._finalizer()
            raise
        self._sock = ours
        self.info: EngineInfo = ready.info
        self.pid = self._process.pid
        self.worker_pids = list(ready.worker_pids)
        self._input = InputProcessor(
            tokenizer, self.info, config.model.chat_template, config.structured_outputs, generation_defaults,
            lora_checker_for(config, source),
        )  # fmt: skip
        self._grammar_tokenizer_sent = False
        self._output = OutputProcessor(tokenizer)
        self._streams: dict[str, OutputQueue] = {}
        self._listeners: tuple[Callable[[EngineStats], None], ...] = ()
        self._pending_finished: list[FinishedRequestStats] = []
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._dead_error: BaseException | None = None
        self._last_progress = time.monotonic()

    def _wait_ready(self, conn: multiprocessing.connection.Connection) -> msg.CoreReady:
        while not conn.poll(_START_POLL_S):
            if self._process.poll() is not None:
                raise EngineCoreDiedError(
                    f"the engine core exited with code {self._process.returncode} while starting"
                )
        try:
            message = msg.decode_from_core(conn.recv_bytes())
        except (EOFError, OSError) as error:
            code = self._process.wait(10)
            raise EngineCoreDiedError(f"the engine core exited with code {code} while starting") from error
        if isinstance(message, msg.CoreFailed):
            if (
                message.kind == "ValueError"
            ):  # a configuration the engine refuses: the same error as in-process
                raise ValueError(message.message)
            raise EngineCoreDiedError(f"the engine core failed to start: {message.kind}: {message.message}")
        if not isinstance(message, msg.CoreReady):
            raise EngineCoreDiedError(f"the engine core sent {type(message).__name__} instead of CoreReady")
        return message

    # ---- EngineClient properties -------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self._input.tokenizer

    @property
    def is_running(self) -> bool:
        return self._started and self._dead_error is None and not self._stopping

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead_error

    @property
    def last_progress_time(self) -> float:
        """When the core last sent anything: a step's outputs, or an idle heartbeat."""
        return self._last_progress

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        options: ChatOptions | None = None,
        chat_template: str | None = None,
    ) -> list[int]:
        return self._input.apply_chat_template(messages, options, chat_template)

    def check_lora_adapter(self, lora_request: LoRARequest) -> None:
        self._input.check_lora(lora_request)

    def add_stats_listener(self, listener: Callable[[EngineStats], None]) -> None:
        self._listeners = (*self._listeners, listener)

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._last_progress = time.monotonic()
        self._started = True
        self._tasks.append(asyncio.create_task(self._read_loop(reader)))
        if self.stall_timeout:
            self._tasks.append(asyncio.create_task(self._watch_for_stall(self.stall_timeout)))

    async def shutdown(self) -> None:
        """Asks the core to stop (it stops its workers), waits up to 10 s, then kills it."""
        self._stopping = True
        if self._dead_error is None:
            self._send(msg.Shutdown())
        try:  # the reader keeps draining the core's frames meanwhile, so the core never blocks on a full socket
            await asyncio.to_thread(self._process.wait, 10.0)
        except subprocess.TimeoutExpired:
            logger.warning("The engine core did not stop within 10 s; killing it")
        self._finalizer()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self._writer is not None:
            self._writer.close()
        self._fail_all(EngineDeadError("The engine was shut down."))

    # ---- requests ------------------------------------------------------------------------------------------

    async def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its cumulative outputs; the last has finished=True. Refusals raise before
        the first output; leaving early (aclose, cancellation) aborts it."""
        if not self.is_running:
            raise EngineDeadError("The engine is not running.")
        if request_id in self._streams or request_id in self._output.requests:
            raise InvalidRequestError(f"Request id {request_id!r} is already in use.", param="request_id")
        arrival = time.time()
        text = isinstance(prompt, str) or (isinstance(prompt, dict) and "prompt" in prompt)
        if text or params.structured_outputs is not None or lora_request is not None:
            # Text, a grammar to compile or an adapter's files to check: off the event loop.
            request, state = await asyncio.to_thread(
                self._input.process, request_id, prompt, params, arrival, priority, lora_request
            )
            if not self.is_running:
                raise EngineDeadError("The engine is not running.")
        else:
            request, state = self._input.process(request_id, prompt, params, arrival, priority)
        stream: OutputQueue = asyncio.Queue()
        self._streams[request_id] = stream
        self._output.add_request(state)
        if request.grammar is not None and not self._grammar_tokenizer_sent:
            self._grammar_tokenizer_sent = True
            self._send(
                msg.GrammarTokenizer(self._input.grammars.tokenizer_definition, self.info.eos_token_ids)
            )
        self._send(request)
        finished = False
        try:
            while True:
                try:
                    output = await next_output(stream)
                except BaseException as error:
                    finished = not isinstance(error, asyncio.CancelledError)
                    raise
                finished = output.finished
                yield output
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._abort([request_id])

    async def abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put_nowait(RequestAbortedError(request_id))
        self._abort([request_id])

    def _abort(self, request_ids: list[str]) -> None:
        self._pending_finished.extend(self._output.abort_requests(request_ids))
        if self._dead_error is None and not self._stopping:
            self._send(msg.Abort(request_ids))

    def _send(self, message: msg.ToCore) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        payload = msg.encode(message)
        writer.write(struct.pack("!i", len(payload)) + payload)

    # ---- the core's frames ---------------------------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                if length == -1:  # multiprocessing.connection's header for frames past 2 GiB
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                message = msg.decode_from_core(await reader.readexactly(length))
                self._last_progress = time.monotonic()
                if isinstance(message, msg.CoreOutputs):
                    self._on_outputs(message)
                elif isinstance(message, msg.CoreFailed):
                    raise EngineCoreDiedError(f"the engine core failed: {message.kind}: {message.message}")
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as error:
            if self._stopping:
                return
            code = await asyncio.to_thread(_wait_briefly, self._process)
            self._declare_dead(EngineCoreDiedError(f"the engine core process exited (code {code})"), error)
        except BaseException as error:  # noqa: BLE001 - a failed core, or a bug here: either way, dead
            if not self._stopping:
                self._declare_dead(error, error)

    def _on_outputs(self, core_outputs: msg.CoreOutputs) -> None:
        outputs, stopped, finished = self._output.process(core_outputs.outputs)
        if stopped:
            self._send(msg.FinishSequences(stopped))
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)
        iteration = core_outputs.iteration_stats
        iteration.finished_requests = [*self._pending_finished, *finished]
        self._pending_finished = []
        stats = EngineStats(core_outputs.scheduler_stats, iteration)
        for listener in self._listeners:
            try:
                listener(stats)
            except Exception:  # noqa: BLE001 - a metrics bug must not kill the engine
                logger.exception("Stats listener failed")

    def _declare_dead(self, error: BaseException, cause: BaseException | None = None) -> None:
        if self._dead_error is not None:
            return
        self._dead_error = error
        logger.error("Engine core died: %s", error, exc_info=cause if cause is not error else None)
        self._finalizer()  # a wedged or half-dead core: kill it (its workers follow)
        self._fail_all(EngineDeadError(f"The engine stopped: {type(error).__name__}"))
        if self.on_dead is not None:
            self.on_dead(error)

    def _fail_all(self, error: BaseException) -> None:
        for stream in list(self._streams.values()):
            stream.put_nowait(error)

    async def _watch_for_stall(self, timeout: float) -> None:
        while self._dead_error is None and not self._stopping:
            await asyncio.sleep(min(1.0, timeout / 4))
            silent = time.monotonic() - self._last_progress
            if silent > timeout:
                logger.error(
                    "The engine core sent nothing for %.0f s (a step wedged); declaring it dead", silent
                )
                self._declare_dead(TimeoutError(f"engine step exceeded {timeout} s"))
                return


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def _wait_briefly(process: subprocess.Popen) -> int | None:
    try:
        return process.wait(2.0)
    except subprocess.TimeoutExpired:
        return None
