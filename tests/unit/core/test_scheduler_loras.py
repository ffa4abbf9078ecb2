"""The scheduler with LoRA adapters: at most --max-loras adapters among the running sequences (others wait,
keeping their place, while later requests that fit go ahead), and prefix-cache blocks never shared across
adapters."""

from __future__ import annotations

from tests.unit.core.test_scheduler import make_request, run_step

from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.sequence import Sequence
from pagedserve.lora.request import LoRARequest

SQL = LoRARequest("sql", 1, "/adapters/sql")
CHAT = LoRARequest("chat", 2, "/adapters/chat")


def _with_lora(seq_id: str, lora: LoRARequest | None, num_tokens: int = 5, max_tokens: int = 100) -> Sequence:
    seq = make_request(seq_id, num_tokens, max_tokens)
    seq.lora = lora
    return seq


def _scheduler(max_loras: int) -> Scheduler:
    return Scheduler(KVCacheManager(64, 4, True), 8, 64, 1000, max_loras=max_loras)


def test_a_second_adapter_waits_while_max_loras_are_running_and_later_requests_go_ahead():
    sched = _scheduler(max_loras=1)
    a, b, c, d = (
        _with_lora("a", SQL, max_tokens=2), _with_lora("b", CHAT), _with_lora("c", None), _with_lora("d", SQL)
    )  # fmt: skip
    for seq in (a, b, c, d):
        sched.add_sequence(seq)
    out, _ = run_step(sched)
    # b's adapter would be a second one: it keeps its place; the base model's c and sql's d join.
    assert [s.seq_id for s in out.sequences] == ["a", "c", "d"]
    assert [s.seq_id for s in sched.waiting] == ["b"]
    assert [(n.seq_id, n.lora) for n in out.new_sequences] == [("a", SQL), ("c", None), ("d", SQL)]
    stats = sched.make_stats()
    assert (stats.running_lora_adapters, stats.waiting_lora_adapters) == (["sql"], ["chat"])
    run_step(sched)  # a finishes (max_tokens 2); d still runs sql
    assert "b" not in {s.seq_id for s in sched.running}
    sched.finish_sequences(["d"], d.status.FINISHED_ABORTED)
    out, _ = run_step(sched)
    assert "b" in [s.seq_id for s in out.sequences]
    assert sched.make_stats().running_lora_adapters == ["chat"]
    sched.check_invariants()


def test_two_adapters_run_together_under_max_loras_2():
    sched = _scheduler(max_loras=2)
    for seq in (_with_lora("a", SQL), _with_lora("b", CHAT), _with_lora("c", None)):
        sched.add_sequence(seq)
    out, _ = run_step(sched)
    assert [s.seq_id for s in out.sequences] == ["a", "b", "c"]


def test_prefix_cache_hits_only_within_one_adapter():
    sched = _scheduler(max_loras=2)
    first = _with_lora("first", SQL, num_tokens=13, max_tokens=1)
    sched.add_sequence(first)
    run_step(sched)  # computes and caches 3 full blocks, then finishes
    for seq_id, lora, hit in [("base", None, 0), ("chat", CHAT, 0), ("sql", SQL, 12)]:
        seq = _with_lora("first", lora, num_tokens=13, max_tokens=1)  # the same prompt tokens
        seq.seq_id = seq.request_id = seq_id
        sched.add_sequence(seq)
        run_step(sched)
        assert seq.num_cached_tokens == hit, seq_id
    sched.check_invariants()
