"""Plain counters and timings the engine reports each step. No prometheus import: the server maps these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FinishedRequestStats:
    """Timings of one finished request, in seconds (time.time() clock)."""

    request_id: str
    finish_reason: str  # stop | length | abort | error
    num_prompt_tokens: int
    num_generation_tokens: int  # summed over the n samples
    n: int
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    finished_time: float
    num_preemptions: int
    max_tokens: int | None
    structured_output: str | None = None  # the constraint's kind (json, regex, ...), None when unconstrained
    grammar_compile_time: float | None = None  # seconds its grammar took to compile; None when cached

    @property
    def e2e_latency(self) -> float:
        return self.finished_time - self.arrival_time

    @property
    def queue_time(self) -> float:
        start = self.first_scheduled_time if self.first_scheduled_time is not None else self.finished_time
        return start - self.arrival_time

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def inference_time(self) -> float:
        start = self.first_scheduled_time if self.first_scheduled_time is not None else self.finished_time
        return self.finished_time - start

    @property
    def prefill_time(self) -> float:
        if self.first_scheduled_time is None or self.first_token_time is None:
            return 0.0
        return self.first_token_time - self.first_scheduled_time

    @property
    def decode_time(self) -> float:
        return 0.0 if self.first_token_time is None else self.finished_time - self.first_token_time

    @property
    def time_per_output_token(self) -> float | None:
        if self.first_token_time is None or self.num_generation_tokens <= self.n:
            return None
        return (self.finished_time - self.first_token_time) / (self.num_generation_tokens / self.n - 1)


@dataclass
class SchedulerStats:
    """Gauges at the end of a step."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0  # fraction of blocks in use, 0..1
    num_used_blocks: int = 0
    num_total_blocks: int = 0
    num_kv_tokens: int = 0  # token slots holding computed K/V in running sequences' blocks
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache since the last stats
    prefix_cache_hits: int = 0  # tokens found
    # --enable-lora: the adapters of the running and of the waiting requests, by name (vllm:lora_requests_info)
    running_lora_adapters: list[str] = field(default_factory=list)
    waiting_lora_adapters: list[str] = field(default_factory=list)


@dataclass
class IterationStats:
    """What happened in one engine step (deltas, to be added to counters)."""

    timestamp: float = 0.0
    num_prompt_tokens: int = 0  # prompt tokens computed this step (not prefix-cache hits)
    num_generation_tokens: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # tokens found
    num_tokens_in_step: int = 0  # tokens the model processed this step
    time_to_first_tokens: list[float] = field(
        default_factory=list
    )  # seconds, requests that got their first token
    inter_token_latencies: list[float] = field(default_factory=list)  # seconds, decode tokens this step
    # Speculative decoding: drafts verified this step, their tokens, the tokens kept, and kept by draft position.
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)


@dataclass
class EngineStats:
    scheduler: SchedulerStats
    iteration: IterationStats
