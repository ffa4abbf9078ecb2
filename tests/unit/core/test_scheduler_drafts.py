"""The scheduler with speculative decoding: draft tokens run as extra decode tokens, rejected ones are computed
again, a stop among the kept tokens drops the rest, and drafts never cost another sequence its blocks."""

from __future__ import annotations

import pytest
from tests.unit.core.test_scheduler import make_request, make_scheduler

from pagedserve.core.sequence import SequenceStatus


def prefill(sched, *sequences) -> None:
    for seq in sequences:
        sched.add_sequence(seq)
    out = sched.schedule()
    sched.update_from_output(out, {s.seq_id: [5] for s in out.sequences if s.samples})


def test_a_draft_is_scheduled_after_the_last_token_and_rejected_positions_are_recomputed() -> None:
    sched = make_scheduler(block_size=4)
    a = make_request("a", 6)
    prefill(sched, a)
    a.spec_token_ids = [11, 12, 13]
    out = sched.schedule()
    (seq,) = out.sequences
    assert (seq.start_position, seq.token_ids, seq.num_draft_tokens, seq.samples) == (
        6,
        [5, 11, 12, 13],
        3,
        True,
    )
    assert seq.block_ids == [0, 1, 2]  # slots for positions 6-9: a third block
    assert a.spec_token_ids == [] and out.num_decode_tokens == 4
    # The model kept 11 and sampled 40 where 12 was proposed: two tokens, and positions 8-9 are computed again.
    progressed, finished = sched.update_from_output(out, {"a": [11, 40]})
    assert progressed == [a] and not finished
    assert a.output_token_ids == [5, 11, 40] and a.num_new_output_tokens == 2
    assert a.num_computed_tokens == 8 == a.num_tokens - 1
    out = sched.schedule()
    assert [(s.start_position, s.token_ids, s.num_draft_tokens) for s in out.sequences] == [(8, [40], 0)]
    sched.update_from_output(out, {"a": [41]})
    sched.check_invariants()


def test_a_fully_accepted_draft_gives_one_token_more() -> None:
    sched = make_scheduler()
    a = make_request("a", 3)
    prefill(sched, a)
    a.spec_token_ids = [7, 8]
    out = sched.schedule()
    sched.update_from_output(out, {"a": [7, 8, 9]})
    assert a.output_token_ids == [5, 7, 8, 9] and a.num_computed_tokens == a.num_tokens - 1 == 6
    sched.check_invariants()


def test_more_tokens_than_the_draft_allows_is_an_error() -> None:
    sched = make_scheduler()
    a = make_request("a", 3)
    prefill(sched, a)
    a.spec_token_ids = [7]
    out = sched.schedule()
    with pytest.raises(ValueError, match="got 3 tokens for 1 draft tokens"):
        sched.update_from_output(out, {"a": [7, 8, 9]})


def test_a_stop_token_among_the_kept_tokens_ends_the_sequence_there() -> None:
    sched = make_scheduler()
    a = make_request("a", 3, stop_token_ids=[8])
    b = make_request("b", 3, max_tokens=3)
    prefill(sched, a, b)
    a.spec_token_ids, b.spec_token_ids = [7, 8, 9], [6, 6]
    out = sched.schedule()
    _, finished = sched.update_from_output(out, {"a": [7, 8, 9, 10], "b": [6, 6, 6]})
    assert (
        a.output_token_ids == [5, 7, 8] and a.stop_reason == 8 and a.status == SequenceStatus.FINISHED_STOPPED
    )
    assert b.output_token_ids == [5, 6, 6] and b.status == SequenceStatus.FINISHED_LENGTH
    assert (a.num_new_output_tokens, b.num_new_output_tokens) == (2, 2)
    assert set(finished) == {a, b}
    sched.check_invariants()


def test_the_token_budget_cuts_the_draft() -> None:
    sched = make_scheduler(budget=3)
    a = make_request("a", 2)
    prefill(sched, a)
    a.spec_token_ids = [1, 2, 3, 4]
    out = sched.schedule()
    assert [(s.token_ids, s.num_draft_tokens) for s in out.sequences] == [([5, 1, 2], 2)]


def test_out_of_blocks_the_draft_is_dropped_before_anyone_is_preempted() -> None:
    sched = make_scheduler(num_blocks=2, block_size=4)
    a, b = make_request("a", 3), make_request("b", 3)
    prefill(sched, a, b)  # one block each, position 3 still free in both
    a.spec_token_ids = [1, 2, 3]  # would need a second block
    out = sched.schedule()
    assert [(s.seq_id, s.num_draft_tokens) for s in out.sequences] == [("a", 0), ("b", 0)]
    assert out.num_preemptions == 0
    sched.update_from_output(out, {"a": [6], "b": [6]})
    sched.check_invariants()


def test_a_preempted_sequence_loses_its_draft() -> None:
    sched = make_scheduler(num_blocks=2, block_size=4)
    a, b = make_request("a", 3), make_request("b", 3)
    prefill(sched, a, b)
    out = sched.schedule()
    sched.update_from_output(out, {"a": [6], "b": [6]})  # both blocks full now
    b.spec_token_ids = [9]
    out = sched.schedule()  # a needs a block: b (the latest) is preempted
    assert out.preempted_seq_ids == ["b"] and b.spec_token_ids == []
    sched.check_invariants()


def test_draft_positions_are_not_registered_in_the_prefix_cache() -> None:
    sched = make_scheduler(block_size=4)
    a = make_request("a", 3)
    prefill(sched, a)  # tokens: 3 prompt + [5]
    a.spec_token_ids = [1, 2, 3, 4]  # positions 3-7: the second block would be full of draft tokens
    out = sched.schedule()
    hashes = sched.kv._req_to_hashes["a"]
    assert len(hashes) == 1  # only the block of known tokens (positions 0-3)
    sched.update_from_output(out, {"a": [9]})  # nothing kept
    sched.check_invariants()
