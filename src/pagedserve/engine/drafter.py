"""The engine core's side of speculative decoding: drafts proposed after each step, and the step's counters.

The scheduler runs a sequence's draft as extra tokens of its next step (core/scheduler.py), the runner verifies it
(worker/speculative.py); this decides which sequences get one and how long it may be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pagedserve.core.ngram_proposer import NgramProposer
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.core.sequence import Sequence
from pagedserve.core.stats import IterationStats
from pagedserve.json_configs import SpeculativeConfig

logger = logging.getLogger("pagedserve")


class Drafter:
    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        config.validate()
        self.proposer = NgramProposer(config.num_speculative_tokens, config.lookup_min, config.lookup_max)
        self.batch_limit = config.disable_by_batch_size  # no drafts while more sequences than this run
        self.max_model_len = max_model_len
        logger.info(
            "speculative decoding: ngram drafts of up to %d tokens (n-grams of %d to %d tokens)%s",
            config.num_speculative_tokens, config.lookup_min, config.lookup_max,
            "" if self.batch_limit is None else f", none while more than {self.batch_limit} sequences run",
        )  # fmt: skip

    def propose(
        self,
        progressed: list[Sequence],
        num_running: int,
        grammar_prefix: Callable[[str, list[int]], list[int]],
    ) -> None:
        """Drafts for the next step of each sequence that just got tokens: cut by `grammar_prefix` where a
        constrained sequence's grammar would refuse them; none for one with no room left for more than one token,
        and none at all while more sequences run than disable_by_batch_size."""
        if self.batch_limit is not None and num_running > self.batch_limit:
            return
        for seq in progressed:
            if seq.is_finished:
                continue
            # Every token the step could keep must fit max_tokens and max_model_len: k drafts give up to k + 1.
            room = min(seq.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
            if room > 0:
                seq.spec_token_ids = grammar_prefix(
                    seq.seq_id, self.proposer.propose(seq.all_token_ids, room)
                )


def count_drafts(
    sched_out: SchedulerOutput, sampled_token_ids: dict[str, list[int]], iteration: IterationStats
) -> None:
    """The step's speculative-decoding counters: drafts verified, their tokens, and how many were kept."""
    for seq in sched_out.sequences:
        if not seq.num_draft_tokens or seq.seq_id not in sampled_token_ids:
            continue
        accepted = len(sampled_token_ids[seq.seq_id]) - 1
        iteration.num_drafts += 1
        iteration.num_draft_tokens += seq.num_draft_tokens
        iteration.num_accepted_tokens += accepted
        per_position = iteration.num_accepted_tokens_per_pos
        per_position.extend([0] * (seq.num_draft_tokens - len(per_position)))
        for position in range(accepted):
            per_position[position] += 1
