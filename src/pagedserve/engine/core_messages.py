"""What crosses the seam between the engine's front end (tokenizer, detokenizer, request states) and its core
(scheduler and executor): plain msgspec structs, so the core can live in another process (engine/core_proc.py)
and a connection only ever yields these types, never pickle.

In one process (offline `LLM`) the same structs pass by reference, unencoded.
"""

from __future__ import annotations

import msgspec

from pagedserve.config import EngineConfig
from pagedserve.core.scheduler_output import ReasoningGate
from pagedserve.core.stats import IterationStats, SchedulerStats
from pagedserve.lora.request import LoRARequest
from pagedserve.outputs import EngineInfo, PositionLogprobs
from pagedserve.sampling_params import SamplingParams


class EngineCoreRequest(msgspec.Struct, tag=True):
    """A validated request in token ids: the core runs `sampling_params.n` sequences for it."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams  # all_stop_token_ids already holds the EOS ids unless ignore_eos
    arrival_time: float  # time.time() when the front end received it
    max_tokens: int  # resolved: never None here
    eos_token_ids: list[int]
    grammar: str | None = None  # llguidance grammar text, validated by the front end (structured outputs)
    cache_salt: str | None = None  # folded into the first block's hash: prefix hits only within one salt
    priority: int = 0  # lower first, under --scheduling-policy priority
    reasoning_gate: ReasoningGate | None = None  # with a grammar and --reasoning-parser
    lora: LoRARequest | None = None  # its LoRA adapter, checked by the front end (--enable-lora)


class SequenceOutput(msgspec.Struct, array_like=True):
    """What one step did for one sequence: new tokens (and their logprobs), prompt logprobs, or both. One new
    token a step, or more when speculative decoding kept draft tokens."""

    seq_id: str
    request_id: str
    sample_index: int
    new_token_ids: list[int]
    finish_reason: str | None  # set in the step the core finished it (EOS, stop token, length)
    stop_reason: int | None  # the stop token id that finished it
    logprobs: list[PositionLogprobs] | None  # one entry per new token
    prompt_logprobs: list[PositionLogprobs] | None  # only for sample 0 of a request
    num_cached_tokens: int
    num_preemptions: int
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finished_time: float | None
    embedding: list[float] | None = None  # an embedding request's vector, in the step its prompt ended


class CoreOutputs(msgspec.Struct, tag=True):
    """One step of the core. `iteration.finished_requests` is empty: the front end, which holds the requests,
    fills it."""

    outputs: list[SequenceOutput]
    scheduler_stats: SchedulerStats
    iteration_stats: IterationStats


# ---- only between the front end and an engine-core process ---------------------------------------------------


class StartCore(msgspec.Struct, tag=True):
    config: EngineConfig


class Abort(msgspec.Struct, tag=True):
    request_ids: list[str]


class FinishSequences(msgspec.Struct, tag=True):
    """Sequences the front end stopped (a stop string matched): free them; tokens already on the way are dropped."""

    seq_ids: list[str]


class GrammarTokenizer(msgspec.Struct, tag=True):
    """The tokenizer's definition (tokenizer.json), sent once before the first request with a grammar: the core
    loads no tokenizer otherwise."""

    definition: str
    eos_token_ids: list[int]


class Shutdown(msgspec.Struct, tag=True):
    pass


class CoreReady(msgspec.Struct, tag=True):
    info: EngineInfo
    worker_pids: list[int]


class Heartbeat(msgspec.Struct, tag=True):
    """Sent by an idle core a few times a second: the front end's proof that the core is not wedged."""


class CoreFailed(msgspec.Struct, tag=True):
    kind: str  # the exception's type name
    message: str
    traceback: str


ToCore = StartCore | EngineCoreRequest | Abort | FinishSequences | GrammarTokenizer | Shutdown
FromCore = CoreReady | CoreOutputs | Heartbeat | CoreFailed

_encoder = msgspec.msgpack.Encoder()
_to_core = msgspec.msgpack.Decoder(ToCore)
_from_core = msgspec.msgpack.Decoder(FromCore)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_to_core(data: bytes) -> ToCore:
    return _to_core.decode(data)


def decode_from_core(data: bytes) -> FromCore:
    return _from_core.decode(data)
