"""A stand-in for `pagedserve.engine.llm_engine.LLMEngine` with the same contract and deterministic toy output.

Used by the server unit tests so that HTTP behaviour (validation, streaming, metrics, admission, faults) can be
tested fast and exactly; the e2e tests run the same behaviour against the real engine. The tokenizer is the
real bundled one, so token counts, chat templates and detokenization are the model's.

Generation: sample i of a request emits word tokens chosen from the prompt's token sum and the position, and an
EOS after `_eos_position(prompt)` tokens (unless ignore_eos). Each `step()` advances every running sequence by one
token, after sleeping `step_delay` seconds to stand in for the model.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pagedserve.config import EngineConfig
from pagedserve.core.stats import EngineStats, FinishedRequestStats, IterationStats, SchedulerStats
from pagedserve.engine.chat import ChatOptions, apply_chat_template
from pagedserve.errors import ContextLengthError, InvalidRequestError
from pagedserve.outputs import CompletionOutput, EngineInfo, Logprob, RequestMetrics, RequestOutput
from pagedserve.sampling_params import SamplingParams

_WORDS = " the quick brown fox jumps over a lazy dog while seven small birds sing about rivers and mountains"


@cache
def bundled_tokenizer() -> Any:
    """The bundled model's tokenizer (loaded once per process: ~5 s)."""
    from transformers import AutoTokenizer

    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    eos_position: int
    arrival_time: float
    samples: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    stop_reasons: list[int | str | None] = field(default_factory=list)
    logprobs: list[list[dict[int, Logprob]]] = field(default_factory=list)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)


class FakeLLMEngine:
    """Same public surface as LLMEngine; see the module docstring for what it generates."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        step_delay: float = 0.002,
        num_kv_blocks: int = 512,
    ) -> None:
        config = config or EngineConfig()
        self.config = config
        self.tokenizer = bundled_tokenizer()
        self.step_delay = step_delay
        self.info = EngineInfo(
            model_name="SmolLM2-135M-Instruct",
            max_model_len=config.model.max_model_len or 2048,
            vocab_size=len(self.tokenizer),
            block_size=config.cache.block_size,
            num_kv_blocks=num_kv_blocks,
            kv_cache_bytes=num_kv_blocks * 1024,
            enable_prefix_caching=config.cache.enable_prefix_caching,
            dtype="float32",
            device="cpu",
            eos_token_ids=[self.tokenizer.eos_token_id],
        )
        self.words = self.tokenizer.encode(_WORDS, add_special_tokens=False)
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.requests: dict[str, _Request] = {}
        self.listeners: list[Callable[[EngineStats], None]] = []
        self.pending_finished: list[FinishedRequestStats] = []
        self.num_steps = 0

    # ---- contract ------------------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: list[dict], options: ChatOptions | None = None, chat_template: str | None = None
    ) -> list[int]:
        # The engine's own renderer (validation, content format, template), on the bundled tokenizer.
        return apply_chat_template(self.tokenizer, messages, options, chat_template)

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: Any = None,
    ) -> None:
        if lora_request is not None:
            raise InvalidRequestError("LoRA is not enabled (--enable-lora).", param="lora_request")
        if priority != 0 and self.info.scheduling_policy != "priority":
            raise InvalidRequestError("priority scheduling is not enabled.", param="priority")
        if request_id in self.requests:
            raise InvalidRequestError(f"Duplicate request id {request_id!r}.", param="request_id")
        text, token_ids = self._resolve_prompt(prompt)
        limit = self.info.max_model_len
        if len(token_ids) >= limit:
            requested = len(token_ids) + (params.max_tokens or 0)
            raise ContextLengthError(limit, requested, len(token_ids), param="prompt")
        max_tokens = params.max_tokens if params.max_tokens is not None else limit - len(token_ids)
        if len(token_ids) + max_tokens > limit:
            raise ContextLengthError(limit, len(token_ids) + max_tokens, len(token_ids), param="max_tokens")
        for token in params.stop_token_ids or []:
            if token >= self.info.vocab_size:
                raise InvalidRequestError(
                    "stop_token_ids must be below the vocabulary size.", "stop_token_ids"
                )
        n = params.n
        request = _Request(
            request_id=request_id,
            prompt=text,
            prompt_token_ids=token_ids,
            params=params,
            max_tokens=max_tokens,
            eos_position=20 + sum(token_ids) % 11,
            arrival_time=arrival_time if arrival_time is not None else time.time(),
            samples=[[] for _ in range(n)],
            texts=["" for _ in range(n)],
            finish_reasons=[None] * n,
            stop_reasons=[None] * n,
            logprobs=[[] for _ in range(n)],
        )
        self.requests[request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_ids: Iterable[str]) -> None:
        for request_id in list(request_ids):
            request = self.requests.pop(request_id, None)
            if request is None:
                continue
            if request in self.running:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self.pending_finished.append(self._finished_stats(request, "abort", time.time()))

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def add_stats_listener(self, listener: Callable[[EngineStats], None]) -> None:
        self.listeners.append(listener)

    def check_invariants(self) -> None:
        assert self._used_blocks() <= self.info.num_kv_blocks

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        if self.step_delay:
            time.sleep(self.step_delay)
        now = time.time()
        iteration = IterationStats(timestamp=now)
        iteration.finished_requests.extend(self.pending_finished)
        self.pending_finished = []
        self._admit(now, iteration)
        outputs: list[RequestOutput] = []
        for request in list(self.running):
            self._advance(request, now, iteration)
            outputs.append(self._output(request))
            if request.finished:
                self.running.remove(request)
                del self.requests[request.request_id]
                reason = next(r for r in request.finish_reasons if r is not None)
                iteration.finished_requests.append(self._finished_stats(request, reason, now))
        iteration.num_tokens_in_step = iteration.num_prompt_tokens + iteration.num_generation_tokens
        used = self._used_blocks()
        scheduler = SchedulerStats(
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=used / self.info.num_kv_blocks,
            num_used_blocks=used,
            num_total_blocks=self.info.num_kv_blocks,
        )
        for listener in self.listeners:
            listener(EngineStats(scheduler=scheduler, iteration=iteration))
        return outputs

    # ---- toy scheduler and model ---------------------------------------------------------------------------

    def _resolve_prompt(self, prompt: Any) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt_token_ids", prompt.get("prompt"))
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenizer.encode(prompt, add_special_tokens=False)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            text, token_ids = None, list(prompt)
        else:
            raise InvalidRequestError("prompt must be a string or a list of token ids.", param="prompt")
        if not token_ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        if any(t < 0 or t >= self.info.vocab_size for t in token_ids):
            raise InvalidRequestError("Prompt token ids must be in [0, vocab_size).", param="prompt")
        return text, token_ids

    def _blocks(self, request: _Request) -> int:
        longest = max((len(s) for s in request.samples), default=0)
        return (
            math.ceil((len(request.prompt_token_ids) + longest + 1) / self.info.block_size) * request.params.n
        )

    def _used_blocks(self) -> int:
        return sum(self._blocks(r) for r in self.running)

    def _admit(self, now: float, iteration: IterationStats) -> None:
        max_seqs = self.config.scheduler.max_num_seqs
        while self.waiting and len(self.running) < max_seqs:
            request = self.waiting[0]
            if self._used_blocks() + self._blocks(request) > self.info.num_kv_blocks:
                break
            self.waiting.popleft()
            request.first_scheduled_time = now
            self.running.append(request)
            iteration.num_prompt_tokens += len(request.prompt_token_ids)
            iteration.prefix_cache_queries += len(request.prompt_token_ids)

    def _next_token(self, request: _Request, index: int) -> int:
        position = len(request.samples[index])
        if position >= max(request.eos_position, request.params.min_tokens) and not request.params.ignore_eos:
            return self.info.eos_token_ids[0]
        return self.words[(sum(request.prompt_token_ids) + position + index) % len(self.words)]

    def _logprobs_for(self, token: int, k: int) -> dict[int, Logprob]:
        entry = {token: Logprob(-0.25, 1, self.tokenizer.decode([token]))}
        for rank, alternative in enumerate(w for w in self.words if w != token):
            if rank >= k:
                break
            entry.setdefault(
                alternative, Logprob(-1.0 - rank, rank + 2, self.tokenizer.decode([alternative]))
            )
        return entry

    def _advance(self, request: _Request, now: float, iteration: IterationStats) -> None:
        params = request.params
        if request.first_token_time is None:
            request.first_token_time = now
            iteration.time_to_first_tokens.append(now - request.arrival_time)
        elif request.last_token_time is not None:
            iteration.inter_token_latencies.append(now - request.last_token_time)
        request.last_token_time = now
        for i in range(params.n):
            if request.finish_reasons[i] is not None:
                continue
            token = self._next_token(request, i)
            iteration.num_generation_tokens += 1
            request.samples[i].append(token)
            if params.logprobs is not None:
                request.logprobs[i].append(self._logprobs_for(token, params.logprobs))
            if token in self.info.eos_token_ids and not params.ignore_eos:
                request.finish_reasons[i] = "stop"
            elif token in (params.stop_token_ids or []):
                request.finish_reasons[i], request.stop_reasons[i] = "stop", token
            text = self.tokenizer.decode(request.samples[i], skip_special_tokens=params.skip_special_tokens)
            for stop in params.stop or []:
                cut = text.find(stop)
                if cut >= 0:
                    text = text[: cut + (len(stop) if params.include_stop_str_in_output else 0)]
                    request.finish_reasons[i], request.stop_reasons[i] = "stop", stop
                    break
            request.texts[i] = text
            if request.finish_reasons[i] is None and len(request.samples[i]) >= request.max_tokens:
                request.finish_reasons[i] = "length"

    def _output(self, request: _Request) -> RequestOutput:
        params = request.params
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = [None] + [
                self._logprobs_for(t, params.prompt_logprobs) for t in request.prompt_token_ids[1:]
            ]
        completions = [
            CompletionOutput(
                index=i,
                text=request.texts[i],
                token_ids=list(request.samples[i]),
                cumulative_logprob=-0.25 * len(request.samples[i]),
                logprobs=list(request.logprobs[i]) if params.logprobs is not None else None,
                finish_reason=request.finish_reasons[i],
                stop_reason=request.stop_reasons[i],
            )
            for i in range(params.n)
        ]
        metrics = RequestMetrics(
            arrival_time=request.arrival_time,
            first_scheduled_time=request.first_scheduled_time,
            first_token_time=request.first_token_time,
            last_token_time=request.last_token_time,
            finished_time=request.last_token_time if request.finished else None,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=completions,
            finished=request.finished,
            prompt_logprobs=prompt_logprobs,
            metrics=metrics,
        )

    def _finished_stats(self, request: _Request, reason: str, now: float) -> FinishedRequestStats:
        return FinishedRequestStats(
            request_id=request.request_id,
            finish_reason=reason,
            num_prompt_tokens=len(request.prompt_token_ids),
            num_generation_tokens=sum(len(s) for s in request.samples),
            n=request.params.n,
            arrival_time=request.arrival_time,
            first_scheduled_time=request.first_scheduled_time,
            first_token_time=request.first_token_time,
            finished_time=now,
            num_preemptions=0,
            max_tokens=request.params.max_tokens,
        )
