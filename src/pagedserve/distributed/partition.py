"""Which slice of each sharded dimension a tensor-parallel rank holds. Pure arithmetic, no torch.

Attention is split by KV-head groups (a KV head and the query heads that read it stay on one rank), so query heads
never need another rank's keys. When there are at least as many KV heads as ranks, each rank takes whole groups,
as evenly as they go: SmolLM2-135M (9 query heads, 3 KV heads) at TP=2 puts groups 0-1 (6 query heads) on rank 0
and group 2 (3 query heads) on rank 1. vLLM refuses head counts the size does not divide; we split unevenly instead,
since the sums of a row-parallel all-reduce do not care how many columns each rank held. With fewer KV heads than
ranks, each KV head is replicated on size / num_kv_heads ranks and the query heads split evenly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadShard:
    """This rank's attention heads: [first, first + count) of the query heads and of the KV heads."""

    first_q_head: int
    num_q_heads: int
    first_kv_head: int
    num_kv_heads: int


def even_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """(first, count) of `total` items on `rank`: the first total % size ranks hold one more."""
    base, extra = divmod(total, size)
    first = rank * base + min(rank, extra)
    return first, base + (1 if rank < extra else 0)


def check_heads(num_heads: int, num_kv_heads: int, size: int) -> None:
    """ValueError naming tensor_parallel_size when these heads cannot be split over `size` ranks."""
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} attention heads are not a multiple of {num_kv_heads} KV heads")
    if num_kv_heads >= size:
        return
    if size % num_kv_heads or num_heads % size:
        raise ValueError(
            f"tensor_parallel_size {size} cannot split this model's {num_heads} attention heads / {num_kv_heads} KV "
            f"heads: with fewer KV heads than ranks, the size must be a multiple of the KV heads and divide the "
            f"attention heads (e.g. {num_kv_heads} or fewer ranks)"
        )


def head_shard(num_heads: int, num_kv_heads: int, rank: int, size: int) -> HeadShard:
    check_heads(num_heads, num_kv_heads, size)
    group = num_heads // num_kv_heads  # query heads per KV head
    if num_kv_heads >= size:
        first_kv, count_kv = even_range(num_kv_heads, rank, size)
        return HeadShard(first_kv * group, count_kv * group, first_kv, count_kv)
    per_rank = num_heads // size
    first_q = rank * per_rank
    return HeadShard(first_q, per_rank, first_q // group, 1)


def max_kv_heads_per_rank(num_heads: int, num_kv_heads: int, size: int) -> int:
    """Every rank's cache gets this many KV heads' room per block, so all ranks hold the same number of blocks."""
    return max(head_shard(num_heads, num_kv_heads, r, size).num_kv_heads for r in range(size))
