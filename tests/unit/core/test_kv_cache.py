"""Block pool and KV cache manager: exact block ids, reference counts, prefix caching, LRU eviction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagedserve.core.block_pool import BlockPool
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.sequence import Sequence


def make_request(request_id: str, tokens: list[int], cache_salt: str | None = None, **params) -> Sequence:
    sampling = SimpleNamespace(
        prompt_logprobs=None, min_tokens=0, ignore_eos=False, stop_token_ids=[], **params
    )
    return Sequence(
        request_id,
        tokens,
        sampling,
        arrival_time=0.0,
        max_tokens=100,
        eos_token_ids={0},
        cache_salt=cache_salt,
    )


def test_pool_allocates_in_order_and_frees_to_tail():
    pool = BlockPool(4)
    first = pool.get_new_blocks(2)
    assert [b.block_id for b in first] == [0, 1]
    assert pool.num_free_blocks == 2
    pool.cache_block(first[0], 111)
    pool.free_blocks(first)
    # Uncached block 1 goes to the head (nothing worth keeping); cached block 0 to the tail.
    assert [b.block_id for b in pool.get_new_blocks(4)] == [1, 2, 3, 0]
    pool.check_invariants()


def test_pool_rejects_overallocation_and_double_free():
    pool = BlockPool(2)
    blocks = pool.get_new_blocks(2)
    with pytest.raises(ValueError):
        pool.get_new_blocks(1)
    pool.free_blocks(blocks)
    with pytest.raises(AssertionError):
        pool.free_blocks(blocks[:1])


def test_allocate_exact_block_ids_and_free():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(1, 11)))  # 10 tokens -> 3 blocks
    assert [b.block_id for b in kv.allocate_slots(a, 10)] == [0, 1, 2]
    a.num_computed_tokens = 10
    assert kv.allocate_slots(a, 1) == []  # 11th token still fits block 2
    a.num_computed_tokens = 11
    a.all_token_ids += [50, 51]
    assert [b.block_id for b in kv.allocate_slots(a, 2)] == [3]  # token 13 opens block 3
    assert kv.get_block_ids("a") == [0, 1, 2, 3]
    kv.free(a)
    assert kv.num_free_blocks == 8
    kv.check_invariants()


def test_prefix_cache_hit_shares_blocks_and_keeps_last_token():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    prompt = list(range(1, 13))  # 12 tokens = 3 full blocks
    a = make_request("a", prompt)
    kv.allocate_slots(a, 12)
    b = make_request("b", prompt + [99])
    computed, num_computed = kv.get_computed_blocks(b)
    assert [blk.block_id for blk in computed[0]] == [0, 1, 2] and num_computed == 12
    c = make_request("c", prompt)  # identical prompt: the last block must be recomputed
    computed_c, num_c = kv.get_computed_blocks(c)
    assert [blk.block_id for blk in computed_c[0]] == [0, 1] and num_c == 8
    kv.allocate_slots(b, 1, computed)
    assert kv.get_block_ids("b") == [0, 1, 2, 3]
    assert [blk.ref_cnt for blk in kv.pool.blocks[:4]] == [2, 2, 2, 1]
    kv.free(a)
    kv.free(b)
    kv.check_invariants()
    assert kv.num_free_blocks == 8


def test_cache_salt_limits_prefix_hits_to_requests_with_the_same_salt():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(1, 13))
    kv.allocate_slots(make_request("a", prompt, cache_salt="tenant-a"), 12)
    assert kv.get_computed_blocks(make_request("b", prompt + [9], cache_salt="tenant-a"))[1] == 12
    # Another salt, or none, misses every block (the salt is in the first block's hash, and the chain carries it).
    assert kv.get_computed_blocks(make_request("c", prompt + [9], cache_salt="tenant-b"))[1] == 0
    assert kv.get_computed_blocks(make_request("d", prompt + [9]))[1] == 0
    kv.allocate_slots(make_request("e", prompt), 12)
    assert kv.get_computed_blocks(make_request("f", prompt + [9]))[1] == 12
    assert kv.get_computed_blocks(make_request("g", prompt + [9], cache_salt="tenant-b"))[1] == 0


def test_free_cached_blocks_are_revived_then_evicted_lru():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = make_request("a", [1, 2, 3, 4, 5])  # blocks 0,1 full (cached), 2 partial
    kv.allocate_slots(a, 5)
    kv.free(a)  # free order: 2 (uncached -> head), then 1, 0 at the tail
    b = make_request("b", [1, 2, 3, 4, 9])
    computed, n = kv.get_computed_blocks(b)
    assert [blk.block_id for blk in computed[0]] == [0, 1] and n == 4
    kv.allocate_slots(b, 1, computed)
    assert kv.get_block_ids("b") == [0, 1, 2]
    kv.free(b)
    # Fill the whole pool with an unrelated prompt: the LRU cached blocks get evicted.
    c = make_request("c", [7] * 8)
    kv.allocate_slots(c, 8)
    assert sorted(kv.get_block_ids("c")) == [0, 1, 2, 3]
    d = make_request("d", [1, 2, 3, 4, 9])
    assert kv.get_computed_blocks(d) == ([], 0)
    kv.free(c)
    kv.check_invariants()


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = make_request("a", list(range(1, 13)))
    assert kv.allocate_slots(a, 12) is None
    assert kv.num_free_blocks == 2 and "a" not in kv.req_to_blocks
    kv.check_invariants()


def test_prompt_logprobs_requests_skip_the_prefix_cache():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(1, 10)))
    kv.allocate_slots(a, 9)
    b = make_request("b", list(range(1, 10)))
    b.sampling_params.prompt_logprobs = 1
    assert kv.get_computed_blocks(b) == ([], 0)


def test_prefix_caching_disabled():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    a = make_request("a", list(range(1, 10)))
    kv.allocate_slots(a, 9)
    assert kv.get_computed_blocks(make_request("b", list(range(1, 10)))) == ([], 0)
