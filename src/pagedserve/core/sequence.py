"""One sequence the scheduler runs: token lists, progress, state. Pure Python.

A *request* is what the client sent; a *sequence* is one of its n samples. The n sequences of a request share its
`request_id` (each has its own `seq_id`); with prefix caching they share their full prompt blocks.
"""

from __future__ import annotations

import enum
from typing import Any

from pagedserve.lora.request import LoRARequest


class SequenceStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def finished(self) -> bool:
        return self >= SequenceStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
    SequenceStatus.FINISHED_ERROR: "error",
}


class Sequence:
    def __init__(
        self,
        seq_id: str,
        prompt_token_ids: list[int],
        sampling_params: Any,
        arrival_time: float,
        max_tokens: int,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        request_id: str | None = None,
        sample_index: int = 0,
        cache_salt: str | None = None,
        priority: int = 0,
        lora: LoRARequest | None = None,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id or seq_id
        self.sample_index = sample_index
        self.cache_salt = cache_salt  # prefix-cache isolation: part of the first block's hash
        self.priority = priority  # lower is served first under the priority policy
        self.lora = lora  # its LoRA adapter (--enable-lora), None for the base model
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.arrival_time = arrival_time
        self.max_tokens = max_tokens
        self.eos_token_ids = eos_token_ids
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        # Speculative decoding: draft tokens proposed for the next step (verified there, never part of the output
        # until accepted), and how many tokens the last step appended (1, or more when drafts were accepted).
        self.spec_token_ids: list[int] = []
        self.num_new_output_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit at first scheduling; -1 until then
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.last_inter_token_latency: float | None = None
        self.finished_time: float | None = None

    @property
    def lora_id(self) -> int:
        """Its adapter's id; 0 for the base model."""
        return 0 if self.lora is None else self.lora.lora_int_id

    @property
    def hash_salt(self) -> object:
        """What besides its tokens keys its first block in the prefix cache: the cache salt, and the adapter (K/V
        computed through an adapter's q/k/v layers are its own)."""
        if self.lora is None:
            return self.cache_salt
        return (self.cache_salt, self.lora.lora_int_id)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, status={self.status.name}, prompt={self.num_prompt_tokens}, "
            f"output={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )
