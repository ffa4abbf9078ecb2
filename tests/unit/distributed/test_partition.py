"""How heads, vocabulary and MLP rows split over tensor-parallel ranks (pure arithmetic)."""

from __future__ import annotations

import pytest

from pagedserve.distributed.partition import check_heads, even_range, head_shard, max_kv_heads_per_rank


def test_even_range_covers_everything_once() -> None:
    for total in (1, 7, 9, 49152, 1536):
        for size in (1, 2, 3, 4, 8):
            if size > total:
                continue
            ranges = [even_range(total, r, size) for r in range(size)]
            assert sum(count for _, count in ranges) == total
            assert [first for first, _ in ranges] == [sum(c for _, c in ranges[:r]) for r in range(size)]
            assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1


def test_bundled_model_at_tp2_splits_whole_kv_groups_unevenly() -> None:
    # SmolLM2-135M: 9 query heads, 3 KV heads (groups of 3).
    assert head_shard(9, 3, 0, 2) == head_shard(9, 3, 0, 2).__class__(0, 6, 0, 2)
    rank1 = head_shard(9, 3, 1, 2)
    assert (rank1.first_q_head, rank1.num_q_heads, rank1.first_kv_head, rank1.num_kv_heads) == (6, 3, 2, 1)
    assert max_kv_heads_per_rank(9, 3, 2) == 2


@pytest.mark.parametrize(
    "heads,kv_heads,size", [(32, 8, 2), (32, 8, 4), (32, 8, 8), (64, 8, 8), (9, 3, 3), (4, 2, 2)]
)
def test_kv_heads_split_when_there_are_enough(heads: int, kv_heads: int, size: int) -> None:
    shards = [head_shard(heads, kv_heads, r, size) for r in range(size)]
    assert sum(s.num_kv_heads for s in shards) == kv_heads
    assert sum(s.num_q_heads for s in shards) == heads
    group = heads // kv_heads
    for s in shards:  # each rank's query heads read only its own KV heads
        assert s.first_q_head == s.first_kv_head * group and s.num_q_heads == s.num_kv_heads * group


@pytest.mark.parametrize("heads,kv_heads,size", [(4, 1, 2), (32, 8, 16), (8, 2, 8), (4, 1, 4)])
def test_fewer_kv_heads_than_ranks_replicates_them(heads: int, kv_heads: int, size: int) -> None:
    shards = [head_shard(heads, kv_heads, r, size) for r in range(size)]
    assert all(s.num_kv_heads == 1 and s.num_q_heads == heads // size for s in shards)
    group = heads // kv_heads
    for s in shards:
        assert s.first_q_head // group == s.first_kv_head
        assert (s.first_q_head + s.num_q_heads - 1) // group == s.first_kv_head
    assert sorted({s.first_kv_head for s in shards}) == list(range(kv_heads))


@pytest.mark.parametrize("heads,kv_heads,size", [(9, 3, 4), (12, 3, 4), (4, 2, 3), (6, 6, 0)])
def test_sizes_the_heads_cannot_split_are_refused(heads: int, kv_heads: int, size: int) -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        check_heads(heads, kv_heads, size)
