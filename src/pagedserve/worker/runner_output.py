"""What the model runner hands back for one scheduler step: plain data, the same in one process and from
tensor-parallel rank 0 (worker/tp_messages.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedserve.outputs import PositionLogprobs


@dataclass
class ModelRunnerOutput:
    # Each sampling sequence's new tokens: one, or with a draft to verify, the kept draft tokens and one more.
    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)  # one entry per new token
    prompt_logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)
    # Sequences whose LoRA adapter could not be loaded (its folder changed since it was registered) -> why: they
    # ran without it this step, nothing of theirs is reported, and the engine ends them.
    failed_seq_ids: dict[str, str] = field(default_factory=dict)
    # Embedding requests (--runner pooling) whose prompt ended this step -> their pooled hidden states.
    embeddings: dict[str, list[float]] = field(default_factory=dict)
