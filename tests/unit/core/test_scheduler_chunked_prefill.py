"""--no-enable-chunked-prefill: a prompt is computed in one step or waits, and the queue waits behind it; the
budget rules of vLLM's SchedulerConfig (SchedulerConfig.token_budget)."""

from __future__ import annotations

import pytest
from tests.unit.core.test_scheduler import make_request, run_step

from pagedserve.config import SchedulerConfig
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler


def _scheduler(chunked: bool, budget: int = 16) -> Scheduler:
    return Scheduler(KVCacheManager(64, 4, True), 8, budget, 1000, chunked_prefill=chunked)


def test_with_chunked_prefill_a_long_prompt_takes_what_is_left_of_the_budget():
    sched = _scheduler(chunked=True)
    a, b = make_request("a", 10), make_request("b", 12)
    sched.add_sequence(a)
    sched.add_sequence(b)
    out, _ = run_step(sched)
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("a", 10), ("b", 6)]


def test_without_it_a_prompt_that_does_not_fit_waits_whole_and_the_queue_behind_it():
    sched = _scheduler(chunked=False)
    a, b, c = make_request("a", 10, max_tokens=2), make_request("b", 12), make_request("c", 2)
    for seq in (a, b, c):
        sched.add_sequence(seq)
    out, _ = run_step(sched)
    # b's 12 tokens do not fit the 6 left: it waits, and c (which would fit) waits behind it.
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("a", 10)]
    assert [s.seq_id for s in sched.waiting] == ["b", "c"]
    out, _ = run_step(sched)  # a decodes (1 token): 15 left, b's 12 fit, c's 2 do too
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("a", 1), ("b", 12), ("c", 2)]
    assert all(s.samples for s in out.sequences)
    sched.check_invariants()


def test_without_it_a_prefix_hit_counts_only_the_tokens_left_to_compute():
    sched = _scheduler(chunked=False)
    first = make_request("x", 12, max_tokens=1)
    sched.add_sequence(first)
    run_step(sched)
    assert not sched.running  # finished: its 3 full blocks stay cached
    busy, again = make_request("busy", 10), make_request("x", 12)
    again.seq_id = "x2"
    sched.add_sequence(busy)
    sched.add_sequence(again)
    out, _ = run_step(sched)
    # 6 tokens left after busy's 10; x2 has 12 of which 8 are cached (the last block is recomputed for its logits).
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("busy", 10), ("x2", 4)]


def test_token_budget_follows_vllms_rules():
    assert SchedulerConfig().token_budget(8192) == 4096
    assert SchedulerConfig(max_num_batched_tokens=512).token_budget(8192) == 512
    assert SchedulerConfig(enable_chunked_prefill=False).token_budget(8192) == 8192
    assert SchedulerConfig(enable_chunked_prefill=False).token_budget(1024) == 4096
    assert (
        SchedulerConfig(enable_chunked_prefill=False, max_num_batched_tokens=9000).token_budget(8192) == 9000
    )
    with pytest.raises(
        ValueError, match=r"max_num_batched_tokens \(2048\) is smaller than max_model_len \(8192\)"
    ):
        SchedulerConfig(enable_chunked_prefill=False, max_num_batched_tokens=2048).token_budget(8192)
    with pytest.raises(ValueError, match="long_prefill_token_threshold .* needs chunked prefill"):
        SchedulerConfig(enable_chunked_prefill=False, long_prefill_token_threshold=64).token_budget(256)
