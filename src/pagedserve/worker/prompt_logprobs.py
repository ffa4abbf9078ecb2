"""Prompt logprobs (vLLM's prompt_logprobs): the log-probabilities of each prompt token given the ones before it, from
the hidden states of the prompt positions a step computes."""

from __future__ import annotations

from typing import Any

import torch

from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.outputs import PositionLogprobs
from pagedserve.sample.logprobs import compute_prompt_logprobs


def wants_prompt_logprobs(seq: ScheduledSequence, state: Any) -> bool:
    """True when this step computes prompt positions whose next-token logprobs the request asked for. `state`:
    the runner's RunnerSequence."""
    return (
        state.new.sampling_params.prompt_logprobs is not None
        and seq.start_position < state.num_prompt_tokens - 1
    )


def prompt_logprobs(
    model: Any, step: Any, states: list[Any], hidden: torch.Tensor
) -> dict[str, list[PositionLogprobs]]:
    """Each sequence's entries for the prompt positions of this step (the model's compute_logits on their rows)."""
    result: dict[str, list[PositionLogprobs]] = {}
    for i, (seq, state) in enumerate(zip(step.sequences, states)):
        if not wants_prompt_logprobs(seq, state):
            continue
        k = state.new.sampling_params.prompt_logprobs
        first_row = step.last_token_rows[i] - seq.num_new_tokens + 1
        # Positions whose next token is still a prompt token.
        count = min(seq.num_new_tokens, state.num_prompt_tokens - 1 - seq.start_position)
        logits = model.compute_logits(hidden[first_row : first_row + count]).float()
        start = seq.start_position
        targets = torch.tensor(
            state.new.prompt_token_ids[start + 1 : start + 1 + count], device=hidden.device
        )
        ids, lps, ranks = compute_prompt_logprobs(logits, targets, k)
        result[seq.seq_id] = [
            (i[: 1 + k], lp[: 1 + k], r) for i, lp, r in zip(ids.tolist(), lps.tolist(), ranks.tolist())
        ]
    return result
