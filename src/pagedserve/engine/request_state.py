"""Front-end state of one client request: its n samples as the core reported them, detokenizers, logprobs, and
output building."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedserve.core.stats import FinishedRequestStats
from pagedserve.engine.core_messages import SequenceOutput
from pagedserve.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagedserve.outputs import (
    CompletionOutput,
    Logprob,
    LogprobsDict,
    PositionLogprobs,
    RequestMetrics,
    RequestOutput,
)
from pagedserve.sampling_params import SamplingParams


@dataclass
class SequenceState:
    """One of the request's n sequences, as the core's outputs described it."""

    output_token_ids: list[int] = field(default_factory=list)
    stop_reason: int | str | None = None
    num_cached_tokens: int = -1
    num_preemptions: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    embedding: list[float] | None = None  # an embedding request's vector, once its prompt ran

    def update(self, output: SequenceOutput) -> None:
        self.output_token_ids.extend(output.new_token_ids)
        if output.embedding is not None:
            self.embedding = output.embedding
        if output.stop_reason is not None:
            self.stop_reason = output.stop_reason
        self.num_cached_tokens = output.num_cached_tokens
        self.num_preemptions = output.num_preemptions
        self.first_scheduled_time = output.first_scheduled_time
        self.first_token_time = output.first_token_time
        self.last_token_time = output.last_token_time
        self.finished_time = output.finished_time


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    sequences: list[SequenceState]
    detokenizers: list[IncrementalDetokenizer | None]
    logprobs: list[list[LogprobsDict]] = field(default_factory=list)
    cumulative_logprobs: list[float] = field(default_factory=list)
    prompt_logprobs: list[LogprobsDict | None] | None = None
    finish_reasons: list[str | None] = field(default_factory=list)
    grammar_compile_time: float | None = None  # seconds the front end spent compiling (None: cached or none)

    def __post_init__(self) -> None:
        n = len(self.sequences)
        self.logprobs = [[] for _ in range(n)]
        self.cumulative_logprobs = [0.0] * n
        self.finish_reasons = [None] * n
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]

    @property
    def finished(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)

    def add_logprobs(self, index: int, entry: PositionLogprobs, tokenizer: Any) -> None:
        self.logprobs[index].append(_to_dict(entry, tokenizer))
        self.cumulative_logprobs[index] += entry[1][0]

    def add_prompt_logprobs(self, entries: list[PositionLogprobs], tokenizer: Any) -> None:
        assert self.prompt_logprobs is not None
        self.prompt_logprobs.extend(_to_dict(e, tokenizer) for e in entries)

    def text(self, index: int) -> str:
        detok = self.detokenizers[index]
        if detok is None:
            return ""
        return detok.finalize() if self.finish_reasons[index] is not None else detok.output_text

    def make_output(self) -> RequestOutput:
        outputs = []
        for i, seq in enumerate(self.sequences):
            outputs.append(
                CompletionOutput(
                    index=i,
                    text=self.text(i),
                    token_ids=list(seq.output_token_ids),
                    cumulative_logprob=self.cumulative_logprobs[i]
                    if self.params.logprobs is not None
                    else None,
                    logprobs=self.logprobs[i] if self.params.logprobs is not None else None,
                    finish_reason=self.finish_reasons[i],
                    stop_reason=seq.stop_reason,
                    embedding=seq.embedding,
                )
            )
        first = [s.first_token_time for s in self.sequences if s.first_token_time is not None]
        scheduled = [s.first_scheduled_time for s in self.sequences if s.first_scheduled_time is not None]
        finished_times = [s.finished_time for s in self.sequences if s.finished_time is not None]
        metrics = RequestMetrics(
            arrival_time=self.arrival_time,
            first_scheduled_time=min(scheduled) if scheduled else None,
            first_token_time=min(first) if first else None,
            last_token_time=max((s.last_token_time or 0.0) for s in self.sequences) or None,
            finished_time=max(finished_times) if self.finished and finished_times else None,
            num_preemptions=sum(s.num_preemptions for s in self.sequences),
        )
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=self.finished,
            prompt_logprobs=self.prompt_logprobs,
            metrics=metrics,
            num_cached_tokens=max(self.sequences[0].num_cached_tokens, 0),
        )

    def finished_stats(self, finish_reason: str, now: float) -> FinishedRequestStats:
        output = self.make_output()
        metrics = output.metrics
        assert metrics is not None
        return FinishedRequestStats(
            request_id=self.request_id,
            finish_reason=finish_reason,
            num_prompt_tokens=len(self.prompt_token_ids),
            num_generation_tokens=sum(len(s.output_token_ids) for s in self.sequences),
            n=len(self.sequences),
            arrival_time=self.arrival_time,
            first_scheduled_time=metrics.first_scheduled_time,
            first_token_time=metrics.first_token_time,
            finished_time=metrics.finished_time or now,
            num_preemptions=metrics.num_preemptions,
            max_tokens=self.params.max_tokens,
            structured_output=so.kind if (so := self.params.structured_outputs) is not None else None,
            grammar_compile_time=self.grammar_compile_time,
        )


def _to_dict(entry: PositionLogprobs, tokenizer: Any) -> LogprobsDict:
    token_ids, logprobs, chosen_rank = entry
    result: LogprobsDict = {}
    for position, (token_id, logprob) in enumerate(zip(token_ids, logprobs)):
        if token_id in result:
            continue
        rank = chosen_rank if position == 0 else position
        result[token_id] = Logprob(logprob, rank, decode_token(tokenizer, token_id))
    return result
