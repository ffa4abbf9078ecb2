"""What the model runner needs for one step: which sequences, which tokens, where their KV goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedserve.core.request import Request


@dataclass
class ScheduledSequence:
    request: Request
    num_new_tokens: int  # tokens to run this step, starting at request.num_computed_tokens
    block_ids: list[int]  # the sequence's whole block table after allocation
    samples: bool  # True when this step reaches the end of its known tokens (its logits give the next token)

    @property
    def start_position(self) -> int:
        return self.request.num_computed_tokens

    @property
    def token_ids(self) -> list[int]:
        start = self.request.num_computed_tokens
        return self.request.all_token_ids[start : start + self.num_new_tokens]


@dataclass
class SchedulerOutput:
    sequences: list[ScheduledSequence] = field(default_factory=list)
    preempted_request_ids: list[str] = field(default_factory=list)
    num_preemptions: int = 0
    # Prompt tokens this step computes (not prefix-cache hits) and decode tokens.
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0

    @property
    def total_num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.sequences)

    @property
    def is_empty(self) -> bool:
        return not self.sequences
