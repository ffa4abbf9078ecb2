"""Scheduler: token budget, running first, chunked prefill, preemption by recompute, finishing, aborts."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.sequence import Sequence, SequenceStatus


def make_request(request_id: str, num_tokens: int, max_tokens: int = 100, **params) -> Sequence:
    defaults = dict(prompt_logprobs=None, min_tokens=0, ignore_eos=False, stop_token_ids=[])
    defaults.update(params)
    tokens = [
        (zlib.crc32(request_id.encode()) % 1000) + 10 + i for i in range(num_tokens)
    ]  # not hash(): seeded per run
    return Sequence(request_id, tokens, SimpleNamespace(**defaults), 0.0, max_tokens, eos_token_ids={0})


def make_scheduler(
    num_blocks=16, block_size=4, max_seqs=8, budget=64, max_len=1000, caching=True
) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, block_size, caching), max_seqs, budget, max_len)


def run_step(sched: Scheduler, token: int = 5):
    out = sched.schedule()
    sampled = {s.seq_id: [token] for s in out.sequences if s.samples}
    return out, sched.update_from_output(out, sampled)


def test_prefill_then_decode_with_exact_blocks():
    sched = make_scheduler()
    a = make_request("a", 6)
    sched.add_sequence(a)
    out, (progressed, finished) = run_step(sched)
    assert [(s.seq_id, s.num_new_tokens, s.block_ids, s.samples) for s in out.sequences] == [
        ("a", 6, [0, 1], True)
    ]
    assert progressed == [a] and a.output_token_ids == [5]
    out, _ = run_step(sched)
    assert [(s.num_new_tokens, s.block_ids) for s in out.sequences] == [(1, [0, 1])]
    out, _ = run_step(sched)  # computes position 7: still block 1
    assert out.sequences[0].block_ids == [0, 1]
    out, _ = run_step(sched)  # position 8 opens block 2
    assert out.sequences[0].block_ids == [0, 1, 2]
    sched.check_invariants()


def test_chunked_prefill_respects_budget_and_running_go_first():
    sched = make_scheduler(budget=8)
    a = make_request("a", 3)
    sched.add_sequence(a)
    run_step(sched)
    b = make_request("b", 20)
    sched.add_sequence(b)
    out, _ = run_step(sched)
    # a decodes (1 token), b gets the remaining 7 of the budget and does not sample yet.
    assert [(s.seq_id, s.num_new_tokens, s.samples) for s in out.sequences] == [
        ("a", 1, True),
        ("b", 7, False),
    ]
    assert b.output_token_ids == []
    out, _ = run_step(sched)
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("a", 1), ("b", 7)]
    out, _ = run_step(sched)
    assert [(s.seq_id, s.num_new_tokens, s.samples) for s in out.sequences] == [
        ("a", 1, True),
        ("b", 6, True),
    ]
    assert b.output_token_ids == [5]


def test_max_num_seqs_caps_the_batch():
    sched = make_scheduler(max_seqs=2)
    for name in "abc":
        sched.add_sequence(make_request(name, 2))
    out, _ = run_step(sched)
    assert [s.seq_id for s in out.sequences] == ["a", "b"]
    assert sched.num_waiting == 1


def test_preemption_of_most_recent_and_resume_keeps_tokens():
    sched = make_scheduler(num_blocks=4, block_size=2, caching=False)
    a, b = make_request("a", 3), make_request("b", 3)
    sched.add_sequence(a)
    sched.add_sequence(b)
    run_step(sched)  # a: blocks 0,1; b: blocks 2,3 (pool full)
    assert sched.kv.get_block_ids("a") == [0, 1] and sched.kv.get_block_ids("b") == [2, 3]
    out, _ = run_step(sched)  # both have 4 tokens: fits
    out, _ = run_step(sched)  # a needs a 3rd block -> b (most recent) is preempted
    assert out.preempted_seq_ids == ["b"] and out.num_preemptions == 1
    assert [s.seq_id for s in out.sequences] == ["a"]
    assert b.status == SequenceStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.output_token_ids == [5, 5] and sched.waiting[0] is b
    assert sched.kv.get_block_ids("a") == [0, 1, 2]  # b's freed blocks went to the head of the queue
    sched.finish_sequences(["a"], SequenceStatus.FINISHED_STOPPED)
    out, _ = run_step(sched)  # b recomputes prompt + its 2 generated tokens
    assert [(s.seq_id, s.num_new_tokens, s.samples) for s in out.sequences] == [("b", 5, True)]
    assert b.output_token_ids == [5, 5, 5] and b.num_preemptions == 1
    sched.check_invariants()


def test_stop_conditions():
    sched = make_scheduler()
    a = make_request("a", 2, max_tokens=2)
    b = make_request("b", 2)
    c = make_request("c", 2, stop_token_ids=[7])
    d = make_request("d", 2, min_tokens=2)
    for r in (a, b, c, d):
        sched.add_sequence(r)
    out = sched.schedule()
    _, finished = sched.update_from_output(out, {"a": [5], "b": [0], "c": [7], "d": [0]})
    assert {r.seq_id for r in finished} == {"b", "c"}
    assert b.status == SequenceStatus.FINISHED_STOPPED and c.stop_reason == 7
    out = sched.schedule()
    _, finished = sched.update_from_output(out, {"a": [5], "d": [0]})
    assert {r.seq_id for r in finished} == {"a", "d"}
    assert a.status == SequenceStatus.FINISHED_LENGTH and d.status == SequenceStatus.FINISHED_STOPPED
    sched.check_invariants()


def test_abort_in_every_state_frees_blocks():
    sched = make_scheduler(num_blocks=6, block_size=2, budget=4)
    running, chunked, waiting = make_request("r", 2), make_request("c", 8), make_request("w", 2)
    for r in (running, chunked, waiting):
        sched.add_sequence(r)
    run_step(sched)  # r runs, c gets a 2-token chunk, w waits for budget
    assert chunked.status == SequenceStatus.RUNNING and chunked.num_computed_tokens == 2
    assert waiting.status == SequenceStatus.WAITING
    sched.finish_sequences(["r", "c", "w", "unknown"], SequenceStatus.FINISHED_ABORTED)
    assert not sched.running and not sched.waiting
    assert sched.kv.num_free_blocks == 6
    sched.check_invariants()


def test_siblings_share_prompt_blocks_in_the_same_step():
    sched = make_scheduler(block_size=4)
    prompt = list(range(10, 19))  # 9 tokens -> 2 full blocks + 1
    params = SimpleNamespace(prompt_logprobs=None, min_tokens=0, ignore_eos=False, stop_token_ids=[])
    siblings = [Sequence(f"x-{i}", prompt, params, 0.0, 10, request_id="x", sample_index=i) for i in range(3)]
    for r in siblings:
        sched.add_sequence(r)
    out, _ = run_step(sched)
    assert [(s.num_new_tokens, s.block_ids) for s in out.sequences] == [
        (9, [0, 1, 2]),
        (1, [0, 1, 3]),
        (1, [0, 1, 4]),
    ]
    assert siblings[1].num_cached_tokens == 8
    assert sched.kv.prefix_cache_stats.hits == 16


def test_long_prefill_threshold_chunks_each_prompt_while_decodes_run():
    sched = Scheduler(KVCacheManager(32, 4, True), 8, 64, 1000, long_prefill_token_threshold=8)
    a = make_request("a", 3)
    sched.add_sequence(a)
    run_step(sched)
    b, c = make_request("b", 20), make_request("c", 10)
    sched.add_sequence(b)
    sched.add_sequence(c)
    out, _ = run_step(sched)
    # The budget (64) would take both prompts whole; the threshold gives each at most 8 tokens a step.
    assert [(s.seq_id, s.num_new_tokens, s.samples) for s in out.sequences] == [
        ("a", 1, True),
        ("b", 8, False),
        ("c", 8, False),
    ]
    out, _ = run_step(sched)
    assert [(s.seq_id, s.num_new_tokens) for s in out.sequences] == [("a", 1), ("b", 8), ("c", 2)]
    assert [s.start_position for s in out.sequences] == [4, 8, 8]
    sched.check_invariants()


def test_plain_data_steps_send_each_sequence_once_and_report_finished_ones():
    sched = make_scheduler()
    a, b = make_request("a", 5), make_request("b", 3)
    sched.add_sequence(a)
    out, _ = run_step(sched)
    assert [n.seq_id for n in out.new_sequences] == ["a"] and out.new_sequences[
        0
    ].prompt_token_ids == a.prompt_token_ids
    assert out.sequences[0].token_ids == a.prompt_token_ids
    sched.add_sequence(b)
    out, _ = run_step(sched)
    assert [n.seq_id for n in out.new_sequences] == ["b"]
    assert out.sequences[0].token_ids == [5] and out.sequences[0].start_position == 5  # a's sampled token
    sched.finish_sequences(["a", "b"], SequenceStatus.FINISHED_ABORTED)
    never_run = make_request("c", 3)
    sched.add_sequence(never_run)
    sched.finish_sequences(["c"], SequenceStatus.FINISHED_ABORTED)  # the runner never heard of it
    out = sched.schedule()
    assert sorted(out.finished_seq_ids) == ["a", "b"] and out.is_empty
    assert sched.schedule().finished_seq_ids == []
    stats = sched.make_stats()
    assert stats.num_running_reqs == 0 and stats.num_used_blocks == 0


def prioritized(request_id: str, num_tokens: int, priority: int, arrival: float) -> Sequence:
    sequence = make_request(request_id, num_tokens)
    sequence.priority, sequence.arrival_time = priority, arrival
    return sequence


def test_priority_policy_admits_by_priority_then_arrival():
    sched = Scheduler(KVCacheManager(16, 4), 1, 64, 1000, policy="priority")
    for seq in (
        prioritized("late-low", 3, 5, 0.0),
        prioritized("urgent", 3, -1, 2.0),
        prioritized("low", 3, 5, 1.0),
    ):
        sched.add_sequence(seq)
    assert [s.seq_id for s in sched.waiting] == ["urgent", "late-low", "low"]
    out, _ = run_step(sched)
    assert [s.seq_id for s in out.sequences] == ["urgent"]
    fcfs = make_scheduler(max_seqs=1)
    for seq in (prioritized("a", 3, 5, 0.0), prioritized("b", 3, -1, 1.0)):
        fcfs.add_sequence(seq)
    assert [s.seq_id for s in run_step(fcfs)[0].sequences] == ["a"]  # fcfs ignores priority


def test_priority_policy_preempts_the_least_urgent_even_if_already_scheduled():
    sched = Scheduler(KVCacheManager(5, 2, False), 8, 64, 1000, policy="priority")
    low, high, mid = (
        prioritized("low", 2, 10, 0.0),
        prioritized("high", 3, 0, 1.0),
        prioritized("mid", 1, 5, 2.0),
    )
    for sequence in (low, high, mid):
        sched.add_sequence(sequence)
    assert [s.seq_id for s in sched.waiting] == ["high", "mid", "low"]
    run_step(sched)  # high: blocks 0,1; mid: 2; low: 3
    sched.running[:] = [low, high, mid]  # low first in the list: scheduled before high in a step
    out, _ = run_step(sched)  # every sequence fits (low and mid open their 2nd block: the pool is full)
    assert [s.seq_id for s in out.sequences] == ["low", "high", "mid"]
    out, _ = run_step(sched)  # low fits and is scheduled; then high needs a 3rd block: low is preempted
    assert out.preempted_seq_ids == ["low"]
    assert [s.seq_id for s in out.sequences] == ["high", "mid"]  # mid still runs this step
    assert low.status == SequenceStatus.PREEMPTED and sched.waiting[0] is low
    assert high.status == SequenceStatus.RUNNING and len(sched.kv.get_block_ids("high")) == 3
    sched.check_invariants()
    # A newcomer more urgent than the preempted one goes before it in the queue.
    sched.add_sequence(prioritized("newer", 1, 3, 5.0))
    assert [s.seq_id for s in sched.waiting] == ["newer", "low"]


def test_a_preempted_sequence_resumes_with_its_history() -> None:
    """A prefix-cache hit may restart a preempted sequence past what the runner ran (blocks another sequence
    computed), so its first step after the preemption carries every token before its start; later steps do not."""
    sched = make_scheduler(num_blocks=32, block_size=4, budget=8)
    a = make_request("a", 20)
    sched.add_sequence(a)
    out, _ = run_step(sched)
    assert out.sequences[0].start_position == 0 and out.sequences[0].resumed_token_ids is None
    sched.running.remove(a)
    sched._preempt(a, out)
    out, _ = run_step(sched)
    resumed = out.sequences[0]
    assert resumed.seq_id == "a" and resumed.start_position == 8  # its two computed blocks, from the cache
    assert resumed.resumed_token_ids == a.all_token_ids[:8]
    out, _ = run_step(sched)
    assert out.sequences[0].resumed_token_ids is None
    sched.check_invariants()


def test_a_sequence_preempted_after_its_allocation_leaves_no_uncomputed_block_cached() -> None:
    """Priority policy: a sequence scheduled earlier in the step, then preempted, never computes the blocks its
    allocation registered; their hashes are forgotten, so no later prefix hit reads K/V never written."""
    sched = Scheduler(
        KVCacheManager(5, 2, True), 8, 64, 1000, long_prefill_token_threshold=4, policy="priority"
    )
    low, high = prioritized("low", 10, 10, 0.0), prioritized("high", 2, 0, 1.0)
    for sequence in (low, high):
        sched.add_sequence(sequence)
    run_step(sched)  # high: 1 block; low: its first 4 tokens, 2 blocks; 2 left
    sched.running[:] = [low, high]  # low scheduled first in the next step
    out, _ = run_step(sched)  # low's next 4 tokens take (and register) the last 2; high needs 1: low goes
    assert out.preempted_seq_ids == ["low"] and [s.seq_id for s in out.sequences] == ["high"]
    hashes = sched.kv._block_hashes(low, 8)
    cached = [sched.kv.pool.get_cached_block((0, h)) is not None for h in hashes]
    assert cached[:2] == [True, True]  # computed in the first step
    assert cached[2:] == [False, False], "uncomputed K/V left in the prefix cache"
    sched.check_invariants()
