"""Where and how many math threads each rank runs on the CPU: vLLM's VLLM_CPU_OMP_THREADS_BIND and
VLLM_CPU_NUM_OF_RESERVED_CPU, so a vLLM CPU manifest pins the same cores with our image.

- A CPU list per rank of this node ("0-15|16-31"): rank r's process is confined to list r (its affinity mask, set
  before torch starts its OpenMP threads, which inherit it) and runs one thread per listed CPU.
- "auto" (the default) and "nobind" (vLLM 0.9 said "all"): nothing is pinned; a rank runs as many threads as the
  CPUs the process may use (affinity mask, cgroup quota: cpu_quota.py), less VLLM_CPU_NUM_OF_RESERVED_CPU, shared
  by the node's ranks. vLLM's "auto" also pins each rank to a NUMA node; on the 1-node hosts we measure on that
  changes nothing, so ours does not pin (docs/architecture.md).

--cpu-threads and PAGEDSERVE_CPU_THREADS set the thread count in every mode. Pure Python: the tensor-parallel
worker binds itself before it imports torch.
"""

from __future__ import annotations

import logging
import os

from pagedserve import envs
from pagedserve.cpu_quota import usable_cpus

logger = logging.getLogger("pagedserve")

BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"
UNPINNED = frozenset({"auto", "nobind", "all"})


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]; ValueError naming the variable on anything else (empty, reversed, repeated)."""
    cpus: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(
                f"{BIND_VARIABLE}: {part.strip()!r} in {text!r} is not a CPU number or range"
            ) from None
        if start < 0 or end < start:
            raise ValueError(f"{BIND_VARIABLE}: {part.strip()!r} in {text!r} is not an ascending range")
        cpus.extend(range(start, end + 1))
    if len(set(cpus)) != len(cpus):
        raise ValueError(f"{BIND_VARIABLE}: {text!r} names a CPU twice")
    return cpus


def rank_cpu_lists(value: str) -> list[list[int]] | None:
    """The CPU list of each rank of this node, in order; None when nothing is pinned."""
    if value.lower() in UNPINNED:
        return None
    return [parse_cpu_list(part) for part in value.split("|")]


def check_binding(ranks_per_node: int) -> None:
    """Refuse, before any rank starts, a binding that names too few lists or CPUs this process may not use."""
    lists = rank_cpu_lists(envs.cpu_omp_threads_bind())
    if lists is None:
        return
    if len(lists) < ranks_per_node:
        raise ValueError(
            f"{BIND_VARIABLE} has {len(lists)} CPU list(s) separated by '|', but this node runs {ranks_per_node} "
            "tensor-parallel ranks: give one list per rank"
        )
    allowed = os.sched_getaffinity(0)
    for rank, cpus in enumerate(lists[:ranks_per_node]):
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise ValueError(
                f"{BIND_VARIABLE}: rank {rank}'s list names CPU(s) {outside} outside this process's affinity mask "
                f"{sorted(allowed)}"
            )
    taken = [cpu for cpus in lists[:ranks_per_node] for cpu in cpus]
    if len(set(taken)) != len(taken):
        logger.warning("%s gives two ranks the same CPU: their threads will take turns on it", BIND_VARIABLE)


def bind_rank(local_rank: int) -> list[int] | None:
    """Confine this process (rank `local_rank` of its node) to its CPU list; returns the list, None if unpinned.
    Every thread is moved: threads started later take the mask of their creator, but torch starts one at import
    and an in-process engine's OpenMP team may already exist."""
    lists = rank_cpu_lists(envs.cpu_omp_threads_bind())
    if lists is None:
        return None
    if local_rank >= len(lists):
        raise ValueError(f"{BIND_VARIABLE} has no CPU list for rank {local_rank} ({len(lists)} given)")
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), lists[local_rank])
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    logger.info("rank %d bound to CPUs %s (%s)", local_rank, lists[local_rank], BIND_VARIABLE)
    return lists[local_rank]


def pinned() -> bool:
    return rank_cpu_lists(envs.cpu_omp_threads_bind()) is not None


def default_cpu_threads(ranks_per_node: int) -> int:
    """Threads per rank when neither --cpu-threads nor PAGEDSERVE_CPU_THREADS says. A pinned rank (bind_rank was
    called) runs one per CPU of its list; otherwise the node's usable CPUs, less the reserved ones, are shared."""
    if pinned():
        return len(os.sched_getaffinity(0))
    usable = usable_cpus() - (envs.cpu_reserved() or 0)
    return max(1, usable // ranks_per_node)
