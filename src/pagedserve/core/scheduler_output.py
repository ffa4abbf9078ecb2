"""What the model runner needs for one step, as plain data (ids, token lists, block ids, sampling parameters).

Nothing here refers to a live scheduler object, so a step crosses a process boundary as it is (`worker/executor`
encodes it with msgspec for tensor-parallel workers). As vLLM V1: a sequence's prompt and sampling parameters travel
once, the first time it is scheduled (`NewSequence`); later steps carry only the tokens to run and the block table,
and the runner keeps its own copy of each sequence's tokens until the sequence appears in `finished_seq_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedserve.lora.request import LoRARequest
from pagedserve.sampling_params import SamplingParams


@dataclass
class NewSequence:
    """A sequence the runner has not seen yet: what sampling needs besides the step's tokens."""

    seq_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    sample_index: int  # which of its request's n samples (seeds sibling generators apart)
    lora: LoRARequest | None = None  # its adapter (--enable-lora): the runner loads it from lora_path


@dataclass
class ScheduledSequence:
    seq_id: str
    start_position: int  # the sequence's computed tokens before this step
    token_ids: list[int]  # the tokens run this step, at positions start_position, start_position + 1, ...
    block_ids: list[int]  # the sequence's whole block table after allocation
    samples: bool  # True when this step reaches the end of its known tokens (its logits give the next token)
    # Speculative decoding: the last this many of token_ids are draft tokens to verify (the first token is the
    # sequence's last known one); the step samples a token at each of the 1 + num_draft_tokens positions.
    num_draft_tokens: int = 0
    # The block tables of KV cache groups 1, 2, ... (hybrid models, kv_memory.py): block_ids is group 0's.
    group_block_ids: list[list[int]] = field(default_factory=list)
    # Resuming after a preemption: the sequence's tokens before start_position. A prefix-cache hit may restart it
    # past what the runner ran (blocks another sequence computed), so the runner takes its history from here.
    resumed_token_ids: list[int] | None = None

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class ReasoningGate:
    """A constrained request of a reasoning model: its grammar waits until the model closed its <think> block."""

    end_token_ids: list[int]  # "</think>" as token ids
    # One token that opens the block, while the first output token may still be it (qwen3's models open it
    # themselves): that token or the grammar's first decides.
    start_token_id: int | None = None
    thinking: bool = True  # inside the block from the start (the prompt opened it: deepseek_r1's template)


@dataclass
class GrammarBitmask:
    """Which tokens each grammar-constrained sampling row may take: bit t of row i (little-endian int32 words). A
    sequence verifying draft tokens has one row per position its grammar could check (its seq id repeated)."""

    seq_ids: list[str]  # the constrained sequences that sample this step, in the order of the rows
    words_per_row: int  # ceil(vocab_size / 32)
    data: bytes  # len(seq_ids) * words_per_row int32 words
    # Speculative decoding: which of its sampling positions each row masks (0: the first; i: after i draft
    # tokens), a sequence's rows in order. None: every row is a position 0.
    positions: list[int] | None = None


@dataclass
class SchedulerOutput:
    sequences: list[ScheduledSequence] = field(default_factory=list)
    new_sequences: list[NewSequence] = field(default_factory=list)
    # Sequences finished or aborted since the last step: the runner drops its state for them.
    finished_seq_ids: list[str] = field(default_factory=list)
    preempted_seq_ids: list[str] = field(default_factory=list)
    num_preemptions: int = 0
    # Prompt tokens this step computes (not prefix-cache hits) and decode tokens.
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    # Filled by the engine core when some sampling sequence follows a grammar (structured outputs).
    grammar_bitmask: GrammarBitmask | None = None

    @property
    def total_num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.sequences)

    @property
    def is_empty(self) -> bool:
        return not self.sequences
