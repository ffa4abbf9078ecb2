"""AsyncEngine: the `EngineClient` the server talks to, driving one `LLMEngine` from a background thread.

One thread owns the engine (`step()` is not thread-safe): it applies queued add/abort commands, runs a step,
and hands each step's outputs to the event loop in one batch. Each request has an asyncio queue; since outputs
are cumulative, a slow consumer only needs the newest one, so the stream skips stale entries.

If a step raises, the engine is dead: every open stream gets `EngineDeadError`, new requests are refused, and
`on_dead` is called (the server exits non-zero). A step that stays wedged longer than `stall_timeout` seconds
while requests wait is treated the same way, so no client waits forever.

Fault injection for tests: engine/faults.py (read once at construction).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pagedserve.core.stats import EngineStats
from pagedserve.engine.chat import ChatOptions
from pagedserve.engine.faults import StepFaults
from pagedserve.engine.protocol import PromptInput
from pagedserve.engine.streams import OutputQueue, RequestAbortedError, next_output
from pagedserve.errors import EngineDeadError, InvalidRequestError
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import EngineInfo, RequestOutput
from pagedserve.sampling_params import SamplingParams

logger = logging.getLogger("pagedserve")

# How long the idle loop sleeps before refreshing last_progress_time: readiness windows must be longer.
_IDLE_WAIT_S = 0.25


@dataclass
class _AddCommand:
    request_id: str
    prompt: PromptInput
    params: SamplingParams
    arrival_time: float
    priority: int = 0
    lora_request: LoRARequest | None = None
    accepted: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


@dataclass
class _AbortCommand:
    request_ids: list[str]


class AsyncEngine:
    """asyncio front of an `LLMEngine` (anything with add_request/abort_request/step/has_unfinished_requests)."""

    def __init__(
        self,
        engine: Any,
        stall_timeout: float | None = None,
        on_dead: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.engine = engine
        self.info: EngineInfo = engine.info
        self.stall_timeout = stall_timeout
        self.on_dead = on_dead
        self._commands: queue.SimpleQueue[_AddCommand | _AbortCommand | None] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, OutputQueue] = {}
        self._pending_adds: dict[str, _AddCommand] = {}  # submitted, not yet accepted by the engine thread
        self._listeners: tuple[Callable[[EngineStats], None], ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._dead_error: BaseException | None = None
        self._last_progress = time.monotonic()
        self._step_started: float | None = None
        self._num_steps = 0
        self._flush_stats = False  # aborts happened: run a step even if idle, to publish their stats
        self._faults = StepFaults()
        engine.add_stats_listener(self._dispatch_stats)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> AsyncEngine:
        """Load the model (seconds; call it off the event loop) and wrap it."""
        from pagedserve.engine.llm_engine import LLMEngine

        return cls(LLMEngine(config), **kwargs)

    # ---- EngineClient properties -------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._dead_error is None and not self._stopping

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead_error

    @property
    def last_progress_time(self) -> float:
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
        # Only reads the tokenizer; safe to call from a worker thread while the engine thread steps.
        return self.engine.apply_chat_template(messages, options, chat_template)

    def check_lora_adapter(self, lora_request: LoRARequest) -> None:
        # Reads the adapter's two small files; no engine state.
        self.engine.check_lora_adapter(lora_request)

    def add_stats_listener(self, listener: Callable[[EngineStats], None]) -> None:
        # Copy-on-write: the engine thread iterates the tuple without a lock.
        self._listeners = (*self._listeners, listener)

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run_loop, name="pagedserve-engine", daemon=True)
        self._thread.start()
        if self.stall_timeout:
            self._watchdog = asyncio.create_task(self._watch_for_stall(self.stall_timeout))

    async def shutdown(self) -> None:
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._commands.put(None)
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and self._dead_error is None:
            # A wedged step cannot be interrupted; the thread is a daemon, so give up after a while.
            await asyncio.to_thread(thread.join, 5.0)
        self._fail_all(EngineDeadError("The engine was shut down."))
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:  # tensor-parallel worker processes end with the server
            await asyncio.to_thread(shutdown)

    # ---- requests ------------------------------------------------------------------------------------------

    async def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its cumulative outputs; the last has finished=True.

        Raises InvalidRequestError / ContextLengthError (from the engine's add_request) before the first
        output, EngineDeadError when the engine stopped. Leaving early (aclose, cancellation) aborts it."""
        if self._dead_error is not None or self._thread is None or self._stopping:
            raise EngineDeadError("The engine is not running.")
        if request_id in self._streams:
            raise InvalidRequestError(f"Request id {request_id!r} is already in use.", param="request_id")
        stream: OutputQueue = asyncio.Queue()
        self._streams[request_id] = stream
        finished = False
        try:
            command = _AddCommand(request_id, prompt, params, time.time(), priority, lora_request)
            self._pending_adds[request_id] = command
            self._commands.put(command)
            self._wakeup.set()
            try:
                await asyncio.wrap_future(command.accepted)
            except BaseException:
                finished = _was_refused(command.accepted)  # refused by the engine: nothing to abort
                raise
            finally:
                self._pending_adds.pop(request_id, None)
            while True:
                try:
                    item = await next_output(stream)
                except BaseException as error:
                    finished = not isinstance(error, asyncio.CancelledError)
                    raise
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished and self._dead_error is None:
                self._commands.put(_AbortCommand([request_id]))
                self._wakeup.set()

    async def abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.put_nowait(RequestAbortedError(request_id))
        self._commands.put(_AbortCommand([request_id]))
        self._wakeup.set()

    # ---- engine thread -------------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            while True:
                self._wakeup.clear()  # before reading commands, so a command queued after this wakes us
                if not self._apply_commands():
                    return
                if not self.engine.has_unfinished_requests() and not self._flush_stats:
                    self._last_progress = time.monotonic()
                    self._wakeup.wait(_IDLE_WAIT_S)
                    continue
                # After aborts that left the engine idle, one empty step publishes their stats and the
                # gauges (KV usage back to 0) instead of leaving them until the next request.
                self._flush_stats = False
                outputs = self._step()
                self._last_progress = time.monotonic()
                if outputs:
                    self._post(self._deliver, outputs)
        except BaseException as error:  # noqa: BLE001 - any escape kills the loop; report it, never hang
            logger.exception("Engine loop died")
            self._declare_dead(error)

    def _apply_commands(self) -> bool:
        """Run queued add/abort commands in order; False when asked to stop."""
        aborts: list[str] = []
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command is None:
                return False
            if isinstance(command, _AbortCommand):
                aborts.extend(command.request_ids)
                continue
            if aborts:
                self.engine.abort_request(aborts)
                self._flush_stats = True
                aborts = []
            try:
                self.engine.add_request(
                    command.request_id, command.prompt, command.params, command.arrival_time, command.priority,
                    command.lora_request,
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - bad input: hand the error to the caller
                _settle(command.accepted, error)
            else:
                _settle(command.accepted, None)
        if aborts:
            self.engine.abort_request(aborts)
            self._flush_stats = True
        return True

    def _step(self) -> list[RequestOutput]:
        self._num_steps += 1
        self._step_started = time.monotonic()
        self._faults.before_step(self._num_steps)
        outputs = self.engine.step()
        self._step_started = None
        return outputs

    def _dispatch_stats(self, stats: EngineStats) -> None:
        for listener in self._listeners:
            try:
                listener(stats)
            except Exception:  # noqa: BLE001 - a metrics bug must not kill the engine
                logger.exception("Stats listener failed")

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # loop closed between the check and the call
                pass

    # ---- event loop side -----------------------------------------------------------------------------------

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)

    def _declare_dead(self, error: BaseException) -> None:
        if self._dead_error is not None:
            return
        self._dead_error = error
        self._post(self._on_dead_in_loop, error)

    def _on_dead_in_loop(self, error: BaseException) -> None:
        self._fail_all(EngineDeadError(f"The engine stopped: {type(error).__name__}"))
        if self.on_dead is not None:
            self.on_dead(error)

    def _fail_all(self, error: BaseException) -> None:
        for command in list(self._pending_adds.values()):
            _settle(command.accepted, error)
        for stream in list(self._streams.values()):
            stream.put_nowait(error)

    async def _watch_for_stall(self, timeout: float) -> None:
        while self._dead_error is None and not self._stopping:
            await asyncio.sleep(min(1.0, timeout / 4))
            started = self._step_started
            if started is not None and time.monotonic() - started > timeout:
                logger.error("Engine step has not returned for %.0f s; declaring the engine dead", timeout)
                self._declare_dead(TimeoutError(f"engine step exceeded {timeout} s"))
                return


def _settle(future: concurrent.futures.Future[None], outcome: BaseException | None) -> None:
    """Resolve a future that two threads may race to resolve (engine thread vs. death handling)."""
    try:
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)
    except concurrent.futures.InvalidStateError:
        pass


def _was_refused(future: concurrent.futures.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is not None
