"""What one server process knows about itself: the engine, its lifecycle (loading → ready → draining/dead),
admission counts, and the signal the CLI waits on to stop uvicorn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pagedserve.engine.protocol import EngineClient
from pagedserve.lora.request import LoRARequest
from pagedserve.server.errors import APIError, unavailable
from pagedserve.server.lora_registry import LoRAAdapters
from pagedserve.server.metrics import ServerMetrics
from pagedserve.server_config import ServerConfig

logger = logging.getLogger("pagedserve")
T = TypeVar("T")

# After the engine dies, keep answering (500s, /health 503) this long so clients and probes see why, then exit.
DEAD_ENGINE_EXIT_DELAY_S = 2.0


class ServerState:
    def __init__(self, config: ServerConfig, served_model_names: list[str]) -> None:
        self.config = config
        self.served_model_names = served_model_names
        self.model_name = served_model_names[0]
        self.metrics = ServerMetrics(self.model_name)
        self.lora_adapters = LoRAAdapters(served_model_names)
        self.engine: EngineClient | None = None
        self.warmed = False
        self.draining = False
        self.load_error: BaseException | None = None
        self.engine_died = False
        self.in_flight = 0  # engine requests admitted and not finished (admission control counts these)
        self.exit_requested = asyncio.Event()
        self.exit_code = 0
        # One thread for tokenization: off the event loop and off the engine thread.
        self.tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagedserve-tokenize")

    # ---- lifecycle -----------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Liveness: false once the engine died or failed to load."""
        if self.load_error is not None or self.engine_died:
            return False
        return self.engine is None or self.engine.is_running  # engine is set only once started

    def readiness(self) -> tuple[bool, str]:
        if not self.alive:
            return False, "engine dead"
        if self.engine is None:
            return False, "loading"
        if not self.warmed:
            return False, "warming up"
        if self.draining:
            return False, "draining"
        # An idle engine refreshes its progress time several times a second, so a stale one means a step
        # (with work in it) has been running too long, even if the clients that sent that work left.
        stalled_for = time.monotonic() - self.engine.last_progress_time
        if stalled_for > self.config.ready_stall_seconds:
            return False, f"engine made no progress for {stalled_for:.0f} s"
        return True, "ready"

    def on_engine_dead(self, error: BaseException) -> None:
        """Called on the event loop when the engine loop stopped: fail fast, then exit non-zero."""
        if self.engine_died:
            return
        self.engine_died = True
        logger.error("Engine died (%s); exiting in %.0f s", type(error).__name__, DEAD_ENGINE_EXIT_DELAY_S)
        asyncio.get_running_loop().call_later(DEAD_ENGINE_EXIT_DELAY_S, self.request_exit, 1)

    def request_exit(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)
        self.exit_requested.set()

    async def drain(self) -> None:
        """SIGTERM: refuse new work, let admitted requests finish (up to shutdown_timeout), then exit 0."""
        if self.draining:
            return
        self.draining = True
        timeout = self.config.shutdown_timeout
        logger.info("Draining: %d requests in flight, waiting up to %.0f s", self.in_flight, timeout)
        deadline = time.monotonic() + timeout
        while self.in_flight > 0 and time.monotonic() < deadline and not self.engine_died:
            await asyncio.sleep(0.05)
        if self.in_flight > 0:
            logger.warning("Shutdown timeout: %d requests still in flight are cancelled", self.in_flight)
        self.request_exit(0)

    # ---- per request ---------------------------------------------------------------------------------------

    def require_engine(self) -> EngineClient:
        if not self.alive:
            raise APIError(500, "The engine stopped; the server is restarting.", code="engine_dead")
        if self.engine is None or not self.warmed:
            raise unavailable("The model is still loading.", "model_loading")
        return self.engine

    def require_runner(self, runner: str, api: str) -> EngineClient:
        """The engine, when it runs for `runner` (generate or pooling, --runner); vLLM's 400 otherwise."""
        engine = self.require_engine()
        if engine.info.runner != runner:
            raise APIError(
                400, f"The model does not support {api} API", param="model", code="model_not_supported"
            )
        return engine

    def require_pooling_task(self, tasks: tuple[str, ...], api: str) -> EngineClient:
        """The engine, when it serves pooling for one of `tasks` (embed, score: a one-label classifier, classify);
        vLLM's 400 otherwise."""
        engine = self.require_runner("pooling", api)
        if engine.info.pooling_task not in tasks:
            raise APIError(
                400, f"The model does not support {api} API", param="model", code="model_not_supported"
            )
        return engine

    def check_model(self, name: str | None) -> str:
        """The model a request names: a served name or a LoRA adapter's (404 otherwise); none: the first."""
        if name is None or name == "":
            return self.model_name
        if name not in self.served_model_names and name not in self.lora_adapters.by_name:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return name

    def lora_request(self, model: str) -> LoRARequest | None:
        """The adapter a checked model name stands for; None for the base model."""
        return self.lora_adapters.by_name.get(model)

    def admit(self, count: int) -> None:
        """Reserve `count` engine requests or raise 503 (queue full / draining)."""
        if self.draining:
            self.metrics.reject("draining")
            raise unavailable("The server is shutting down.", "draining")
        if self.in_flight + count > self.config.max_num_queued_reqs:
            self.metrics.reject("queue_full")
            raise unavailable("Too many requests in flight; retry later.", "queue_full")
        self.in_flight += count

    def release(self, count: int) -> None:
        self.in_flight -= count
        assert self.in_flight >= 0, "admission count went negative"

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run tokenizer work on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_pool, function, *args)
