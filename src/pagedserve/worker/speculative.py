"""Verifying draft tokens (speculative decoding): which logits rows sample, and how much of a draft is kept.

A sequence with k draft tokens runs k + 1 positions (its last known token, then the draft), and each position
samples a token with the request's own sampling parameters, its history extended by the draft tokens before it.
The tokens kept are the sampled ones up to and including the first that differs from the draft.

That is the exact rejection sampling of a draft whose proposer puts all its probability on one token (n-gram
drafts): position i keeps draft token d with probability p_i(d), the chance that the sample is d; otherwise the
sample is distributed as p_i restricted to tokens other than d, renormalised, which is the residual
max(p_i - q_i, 0) of speculative sampling with q_i one-hot on d. A greedy position keeps d when d is the argmax.
So outputs follow the same distribution as without a draft, and greedy outputs are the same tokens.
"""

from __future__ import annotations

from pagedserve.core.scheduler_output import ScheduledSequence


def sampling_row_offsets(seq: ScheduledSequence) -> range:
    """Offsets from the sequence's last row of its rows that sample, in position order (k, ..., 1, 0)."""
    return range(seq.num_draft_tokens, -1, -1)


def history_end(seq: ScheduledSequence, offset: int) -> int:
    """Tokens of the sequence (prompt included) that the position `offset` rows before its last one has seen."""
    return seq.start_position + seq.num_new_tokens - offset


def accepted_tokens(seq: ScheduledSequence, sampled: list[int]) -> list[int]:
    """The tokens a step gives the sequence: sampled[i] for every position up to the first whose sample is not
    the draft token at that position (all k + 1 when the whole draft is kept)."""
    draft = seq.token_ids[len(seq.token_ids) - seq.num_draft_tokens :] if seq.num_draft_tokens else []
    for i, token_id in enumerate(draft):
        if sampled[i] != token_id:
            return sampled[: i + 1]
    return sampled[: len(draft) + 1]
