"""KV cache groups (the hybrid allocator): layer grouping, window groups freeing blocks, hybrid prefix-cache hits,
and the scheduler running sequences far past their windows on a pool too small to keep every block."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.sequence import Sequence
from pagedserve.kv_memory import (
    KVCacheGroup,
    group_slots,
    kv_cache_groups,
    sequence_blocks,
    window_blocks,
)


def make_request(request_id: str, tokens: list[int], max_tokens: int = 100) -> Sequence:
    params = SimpleNamespace(prompt_logprobs=None, min_tokens=0, ignore_eos=True, stop_token_ids=[])
    return Sequence(request_id, tokens, params, 0.0, max_tokens, eos_token_ids={0})


def gemma3_windows(num_layers: int, window: int = 512) -> list[int | None]:
    """Gemma 3's pattern: every sixth layer global, the others local."""
    return [None if (i + 1) % 6 == 0 else window for i in range(num_layers)]


def test_groups_follow_vllms_uniform_page_rule():
    # Gemma 3 1B: 4 global layers, 22 local: groups of 4 (the fewest), the last local group half full.
    groups = kv_cache_groups(gemma3_windows(26))
    assert [g.sliding_window for g in groups] == [None] + [512] * 6
    assert groups[0].layers == (5, 11, 17, 23)
    assert [len(g.layers) for g in groups] == [4, 4, 4, 4, 4, 4, 2]
    assert sorted(i for g in groups for i in g.layers) == list(range(26))
    assert group_slots(groups) == 4
    # Gemma 2: alternating, 13 and 13: one group of each kind.
    gemma2 = kv_cache_groups([4096 if i % 2 == 0 else None for i in range(26)])
    assert [(g.sliding_window, len(g.layers)) for g in gemma2] == [(None, 13), (4096, 13)]
    # 5 and 6 layers: under 1.25x apart, so groups of the most (6), one padded slot rather than 6 groups of 1.
    mixed = kv_cache_groups([None] * 5 + [64] * 6)
    assert [(g.sliding_window, len(g.layers)) for g in mixed] == [(None, 5), (64, 6)]
    # Every layer windowed (Mistral v0.1): one window group.
    assert kv_cache_groups([4096] * 32) == [KVCacheGroup(4096, tuple(range(32)))]
    # No window, or the hybrid manager disabled: one full group keeping every block.
    assert kv_cache_groups([None] * 3) == [KVCacheGroup(None, (0, 1, 2))]
    assert kv_cache_groups(gemma3_windows(12), hybrid=False) == [KVCacheGroup(None, tuple(range(12)))]
    with pytest.raises(ValueError, match="at least one layer"):
        kv_cache_groups([])


def test_sequence_blocks_counts_a_window_and_a_chunk():
    assert window_blocks(8, 4) == 2 and window_blocks(9, 4) == 2 and window_blocks(1, 4) == 0
    # Full group: 100 tokens in blocks of 4 = 25. Window 8 with chunks of 4: ceil(11 / 4) + 1 = 4.
    assert sequence_blocks(100, 4, [None], 4) == 25
    assert sequence_blocks(100, 4, [None, 8], 4) == 25 + 4
    # A short sequence never holds more than its own blocks.
    assert sequence_blocks(6, 4, [None, 8, 8], 64) == 2 + 2 + 2


def test_window_group_frees_blocks_out_of_every_window():
    kv = KVCacheManager(32, 4, True, group_windows=[None, 8])
    assert kv.num_blocks == 31  # block 0 is the null block
    seq = make_request("a", list(range(1, 11)))
    kv.allocate_slots(seq, 10)
    assert kv.get_block_ids("a", 0) == [1, 2, 3] and kv.get_block_ids("a", 1) == [4, 5, 6]
    seq.num_computed_tokens = 10
    for token in range(11, 31):  # decode one token at a time to 30 tokens
        seq.append_output_token(token)
        assert kv.allocate_slots(seq, 1) is not None
        seq.num_computed_tokens += 1
        kv.check_invariants()
    # Position 30 (the 31st token) is computed next: it sees keys 23..30, so blocks 0-4 (keys 0-19) of the window
    # group are freed, and its table keeps their places with the null block.
    window_table = kv.get_block_ids("a", 1)
    assert len(window_table) == len(kv.get_block_ids("a", 0)) == 8
    assert window_table[:5] == [0] * 5 and 0 not in window_table[5:]
    assert kv.num_free_blocks == 31 - 8 - 3
    kv.free(seq)
    kv.check_invariants()
    assert kv.num_free_blocks == 31


def _finish(kv: KVCacheManager, seq: Sequence, steps: int) -> None:
    kv.allocate_slots(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    for token in range(steps):
        seq.append_output_token(1000 + token)
        kv.allocate_slots(seq, 1)
        seq.num_computed_tokens += 1
    kv.free(seq)


def test_hybrid_prefix_hit_needs_every_full_block_and_the_window_run():
    prompt = list(range(1, 41))  # 10 blocks of 4
    kv = KVCacheManager(64, 4, True, group_windows=[None, 8])
    _finish(kv, make_request("a", prompt, 1), 1)
    # Same 40 tokens and more: every full block and the window's last blocks are cached: a 40-token hit.
    b = make_request("b", prompt + [77, 78])
    computed, hit = kv.get_computed_blocks(b)
    assert hit == 40
    assert [blk.block_id for blk in computed[0]] == kv_ids_of(kv, 0, prompt)
    # The window group resumes at 40: it needs keys 33..39 (blocks 8 and 9) only; earlier places are null.
    assert [blk.block_id for blk in computed[1]][:8] == [0] * 8
    assert kv.allocate_slots(b, 2, computed) is not None
    kv.check_invariants()
    assert kv.get_block_ids("b", 1)[:8] == [0] * 8
    kv.free(b)
    kv.check_invariants()


def kv_ids_of(kv: KVCacheManager, group: int, tokens: list[int]) -> list[int]:
    probe = make_request("probe", tokens + [1])
    hashes = kv._block_hashes(probe, len(tokens))
    kv.forget_hashes(probe)
    return [kv.pool.get_cached_block((group, h)).block_id for h in hashes]


def test_hybrid_hit_shrinks_to_where_the_window_group_can_resume():
    prompt = list(range(1, 41))
    kv = KVCacheManager(64, 4, True, group_windows=[None, 8])
    _finish(kv, make_request("a", prompt, 1), 1)
    # Evict the window group's last two blocks (keys 32-39): the full group still hits 40 tokens, but the window
    # group can resume only where a run of 2 cached blocks ends: after block 7 (32 tokens).
    hashes = kv._block_hashes(make_request("p", prompt + [1]), 40)
    for h in hashes[8:10]:
        block = kv.pool.get_cached_block((1, h))
        kv.pool._evict(block)
    computed, hit = kv.get_computed_blocks(make_request("c", prompt + [5]))
    assert hit == 32 and len(computed[0]) == len(computed[1]) == 8
    # With the window group's blocks 5-7 also gone, no run of 2 ends at or before block 7 except one from block 0.
    for h in hashes[2:8]:
        kv.pool._evict(kv.pool.get_cached_block((1, h)))
    computed, hit = kv.get_computed_blocks(make_request("d", prompt + [5]))
    assert hit == 8 and [b.block_id for b in computed[1]] == kv_ids_of(kv, 1, prompt[:8])


def test_scheduler_runs_long_sequences_on_a_pool_of_a_few_windows():
    """Three sequences of 200 tokens with a 16-token window: every block kept would take 3 x 2 x 50 = 300 blocks;
    the window group holds ~6 a sequence, so 3 x (50 + 6) fit in 180."""
    windows: list[int | None] = [None, 16]
    kv = KVCacheManager(181, 4, True, group_windows=windows)
    sched = Scheduler(kv, 8, 32, 1000)
    assert sched.max_tokens_fit(1000) is False and sched.max_tokens_fit(200)
    rng = random.Random(0)
    for i in range(3):
        sched.add_sequence(make_request(f"s{i}", [rng.randrange(1, 500) for _ in range(40)], max_tokens=160))
    peak = 0
    while sched.has_unfinished_sequences():
        out = sched.schedule()
        for (
            s
        ) in out.sequences:  # every table covers the sequence's tokens; a window table's live part is short
            assert len(s.block_ids) == len(s.group_block_ids[0])
            assert sum(b != 0 for b in s.group_block_ids[0]) <= window_blocks(16, 4) + 1 + 32 // 4
        sampled = {s.seq_id: [rng.randrange(1, 500)] for s in out.sequences if s.samples}
        sched.update_from_output(out, sampled)
        sched.check_invariants()
        peak = max(peak, kv.pool.num_used_blocks)
    assert out.num_preemptions == 0 and sched.total_preemptions == 0
    assert peak <= 3 * (50 + 6)
    assert kv.pool.num_used_blocks == 0


def test_longest_sequence_counts_every_group():
    """What the front end refuses up front (EngineInfo.max_sequence_tokens): a sequence no pool state can hold."""
    assert KVCacheManager(10, 4).longest_sequence(64, 1000) == 40
    hybrid = KVCacheManager(21, 4, True, group_windows=[None, 8])  # 20 usable blocks
    # n tokens take ceil(n / 4) full blocks plus min(ceil(n / 4), ceil((7 + 8) / 4) + 1 = 5) window blocks.
    assert hybrid.longest_sequence(8, 1000) == 60
    assert hybrid.blocks_for_sequence(60, 8) == 20 and hybrid.blocks_for_sequence(61, 8) == 21
    # Every layer windowed: any length fits; the bound is the caller's.
    assert KVCacheManager(11, 4, True, group_windows=[8]).longest_sequence(8, 1000) == 1000


def test_a_long_hybrid_hit_fits_a_nearly_full_pool():
    """The null places of a window group's hit take nothing from the pool: with 15 blocks free, 12 of them the hit's
    own cached blocks, a 40-token hit (8 null places in the window group) plus its new token's 2 blocks fits."""
    prompt = list(range(1, 41))
    kv = KVCacheManager(24, 4, True, group_windows=[None, 8])  # 23 usable blocks
    _finish(kv, make_request("a", prompt, 1), 1)
    other = make_request("c", list(range(500, 516)))
    assert (
        kv.allocate_slots(other, 16) is not None
    )  # 4 + 4 blocks from the head of the free queue, none of a's hit
    b = make_request("b", prompt + [7])
    computed, hit = kv.get_computed_blocks(b)
    assert hit == 40 and sum(blk is kv.pool.null_block for blk in computed[1]) == 8
    assert kv.num_free_blocks == 15 and all(blk.ref_cnt == 0 for blk in computed[0])
    assert kv.allocate_slots(b, 1, computed) is not None
    assert kv.num_free_blocks == 1
    kv.free(b)
    kv.free(other)
    kv.check_invariants()
    assert kv.pool.null_block.ref_cnt == 1 and kv.num_free_blocks == 23
