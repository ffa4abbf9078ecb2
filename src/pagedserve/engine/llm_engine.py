"""The engine in one process: front end (input and output processors) and `EngineCore`, stepped by the caller.

Not thread-safe: one thread drives it (the offline `LLM` class, or `AsyncEngine`'s thread). The server runs the
same front end on its event loop and the core in its own process (engine/core_client.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from pagedserve.config import EngineConfig
from pagedserve.core.stats import EngineStats, FinishedRequestStats
from pagedserve.engine.chat import ChatOptions
from pagedserve.engine.core import EngineCore
from pagedserve.engine.input_processor import (
    InputProcessor,
    generation_defaults_for,
    load_tokenizer_for,
    lora_checker_for,
)
from pagedserve.engine.output_processor import OutputProcessor
from pagedserve.engine.prompts import PromptInput
from pagedserve.errors import InvalidRequestError
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import RequestOutput
from pagedserve.sampling_params import SamplingParams

StatsListener = Callable[[EngineStats], None]


class LLMEngine:
    def __init__(self, config: EngineConfig, stream_outputs: bool = True) -> None:
        """stream_outputs=False: step() returns only finished requests' outputs (offline use, saves copies)."""
        self.config = config
        tokenizer, source = load_tokenizer_for(config)
        generation_defaults = generation_defaults_for(config, source)  # a bad --generation-config fails first
        self.core = EngineCore(config, source)
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor(
            tokenizer,
            self.core.info,
            config.model.chat_template,
            config.structured_outputs,
            generation_defaults,
            lora_checker_for(config, source),
        )
        self.output_processor = OutputProcessor(tokenizer, stream_outputs)
        self.info = self.core.info
        self._listeners: list[StatsListener] = []
        self._pending_finished: list[FinishedRequestStats] = []

    # The core's parts, for tests and benchmarks that look inside.
    @property
    def executor(self) -> Any:
        return self.core.executor

    @property
    def scheduler(self) -> Any:
        return self.core.scheduler

    @property
    def kv_cache_manager(self) -> Any:
        return self.core.kv_cache_manager

    @property
    def stream_outputs(self) -> bool:
        return self.output_processor.stream_outputs

    @stream_outputs.setter
    def stream_outputs(self, value: bool) -> None:
        self.output_processor.stream_outputs = value

    @property
    def requests(self) -> dict[str, Any]:
        """Open requests' states, by request id."""
        return self.output_processor.requests

    # ---- requests ----------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        options: ChatOptions | None = None,
        chat_template: str | None = None,
    ) -> list[int]:
        return self.input_processor.apply_chat_template(messages, options, chat_template)

    def check_lora_adapter(self, lora_request: LoRARequest) -> None:
        self.input_processor.check_lora(lora_request)

    def add_request(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> None:
        if isinstance(request_id, str) and request_id in self.requests:
            raise InvalidRequestError(f"duplicate request id {request_id!r}", param="request_id")
        arrival = arrival_time if arrival_time is not None else time.time()
        request, state = self.input_processor.process(
            request_id, prompt, params, arrival, priority, lora_request
        )
        self.output_processor.add_request(state)
        if request.grammar is not None:  # the core builds its grammar tokenizer once, off the engine thread
            grammars = self.input_processor.grammars
            self.core.set_grammar_tokenizer(grammars.tokenizer_definition, self.info.eos_token_ids)
        self.core.add_request(request)

    def abort_request(self, request_ids: Iterable[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        self._pending_finished.extend(self.output_processor.abort_requests(ids))
        self.core.abort_requests(ids)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def add_stats_listener(self, listener: StatsListener) -> None:
        self._listeners.append(listener)

    # ---- one step ----------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        core_outputs = self.core.step()
        outputs, stopped, finished = self.output_processor.process(core_outputs.outputs)
        if stopped:
            self.core.finish_sequences(stopped)  # before the next schedule: no token is computed past a stop
        iteration = core_outputs.iteration_stats
        iteration.finished_requests = [*self._pending_finished, *finished]
        self._pending_finished = []
        stats = EngineStats(core_outputs.scheduler_stats, iteration)
        for listener in self._listeners:
            listener(stats)
        return outputs

    def shutdown(self) -> None:
        """Stops the executor's worker processes (nothing to do in-process); the engine cannot step after it."""
        self.core.shutdown()

    def check_invariants(self) -> None:
        self.core.check_invariants()
        core_requests = {s.request_id for s in self.core.scheduler.sequences.values()}
        assert core_requests <= set(self.requests), (
            "the core runs sequences of a request the front end dropped"
        )
