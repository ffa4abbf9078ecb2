"""Verifying draft tokens (worker/speculative.py): the rows a draft runs as, the tokens kept, and why keeping the
sample up to its first disagreement with a one-hot draft is exact rejection sampling."""

from __future__ import annotations

import torch
from tests.unit.sample.helpers import make_row, sample

from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.speculative import accepted_tokens, history_end, sampling_row_offsets


def test_a_draft_runs_as_decode_rows_each_attending_to_its_own_position() -> None:
    plain = ScheduledSequence("a", 9, [4], [0, 1, 2], True)
    draft = ScheduledSequence("b", 5, [7, 8, 9, 10], [3, 4, 6], True, num_draft_tokens=3)
    prompt = ScheduledSequence("c", 0, [1, 2, 3], [5], True)
    step = prepare_inputs([plain, draft, prompt], 4, torch.device("cpu"))
    assert [s.seq_id for s in step.sequences] == ["a", "b", "c"]
    assert step.input_ids.tolist() == [4, 7, 8, 9, 10, 1, 2, 3]
    assert step.positions.tolist() == [9, 5, 6, 7, 8, 0, 1, 2]
    metadata = step.metadata
    assert metadata.num_decode_tokens == 5 and len(metadata.prefills) == 1
    assert metadata.decode_seq_lens.tolist() == [10, 6, 7, 8, 9]  # each row sees up to its own position
    assert metadata.decode_block_tables.tolist() == [[0, 1, 2]] + [[3, 4, 6]] * 4
    assert metadata.slot_mapping.tolist() == [9, 17, 18, 19, 24, 20, 21, 22]
    assert step.last_token_rows == [0, 4, 7]


def test_rows_and_histories_of_a_draft() -> None:
    draft = ScheduledSequence("b", 5, [7, 8, 9, 10], [3, 4], True, num_draft_tokens=3)
    assert list(sampling_row_offsets(draft)) == [3, 2, 1, 0]
    # Position 5 (token 7) has seen 6 tokens; position 8 (the last draft token) 9.
    assert [history_end(draft, offset) for offset in sampling_row_offsets(draft)] == [6, 7, 8, 9]
    plain = ScheduledSequence("a", 9, [4], [0, 1, 2], True)
    assert list(sampling_row_offsets(plain)) == [0] and history_end(plain, 0) == 10


def test_tokens_are_kept_up_to_the_first_disagreement() -> None:
    draft = ScheduledSequence("b", 5, [7, 8, 9, 10], [3, 4], True, num_draft_tokens=3)
    assert accepted_tokens(draft, [8, 9, 10, 11]) == [8, 9, 10, 11]  # all kept, and one more
    assert accepted_tokens(draft, [8, 9, 42, 11]) == [8, 9, 42]
    assert accepted_tokens(draft, [40, 9, 10, 11]) == [40]
    assert accepted_tokens(ScheduledSequence("a", 9, [4], [0], True), [6]) == [6]


def test_keeping_the_sample_is_rejection_sampling_of_a_one_hot_draft() -> None:
    """Position 0 proposes token 1 with the model's p(1) = 0.3: it is kept 30 % of the time, and otherwise the
    token taken follows p without token 1, renormalised: max(p - q, 0) with q one-hot on the draft token. So the
    first token's distribution is p, draft or not (20 000 rows, 5 sigma bounds)."""
    p = torch.tensor([0.1, 0.3, 0.4, 0.2])
    rows = 20_000
    logits = p.log().expand(rows, 4).contiguous()
    out = sample(logits, [make_row(SamplingParams(temperature=1.0))] * rows).sampled_token_ids
    draft = ScheduledSequence("s", 3, [0, 1], [0], True, num_draft_tokens=1)
    first = torch.tensor([accepted_tokens(draft, [t, 0])[0] for t in out.tolist()])
    kept = (first == 1).float().mean().item()
    assert abs(kept - 0.3) < 5 * (0.3 * 0.7 / rows) ** 0.5
    rejected = first[first != 1]
    residual = torch.tensor([0.1, 0.0, 0.4, 0.2]) / 0.7
    for token in (0, 2, 3):
        share = (rejected == token).float().mean().item()
        bound = 5 * (residual[token] * (1 - residual[token]) / rejected.numel()) ** 0.5
        assert abs(share - residual[token].item()) < bound, token
