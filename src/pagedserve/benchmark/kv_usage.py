"""KV memory utilisation of the paged cache at its busiest step: token slots in use ÷ slots in allocated blocks.

The engine reports blocks in use (SchedulerStats.num_used_blocks), not tokens; the runner knows each request's
tokens. With prefix caching, requests share identical full blocks, so the slots in use are counted once per
distinct block (chained like the engine's block hashes) — otherwise sharing would read as more than 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class KVUsageReport:
    block_size: int
    num_total_blocks: int
    busiest_used_blocks: (
        int  # blocks in use at the busiest step where every running request was accounted for
    )
    logical_tokens: int  # Σ tokens held per request at that step
    physical_tokens: int  # the same with shared full blocks counted once
    steps_seen: int

    @property
    def allocated_slots(self) -> int:
        return self.busiest_used_blocks * self.block_size

    @property
    def utilisation(self) -> float:
        return self.physical_tokens / self.allocated_slots if self.allocated_slots else 0.0

    @property
    def logical_utilisation(self) -> float:
        return self.logical_tokens / self.allocated_slots if self.allocated_slots else 0.0


def physical_token_count(sequences: list[list[int]], block_size: int) -> int:
    """Tokens stored when identical full-block prefixes are shared: distinct full blocks + each partial tail."""
    distinct: set[int] = set()
    tails = 0
    for tokens in sequences:
        parent = 0
        full = len(tokens) // block_size
        for b in range(full):
            parent = hash((parent, tuple(tokens[b * block_size : (b + 1) * block_size])))
            distinct.add(parent)
        tails += len(tokens) - full * block_size
    return len(distinct) * block_size + tails


@dataclass
class KVUsageTracker:
    """Engine stats listener + per-step bookkeeping; cheap inside the timed loop (lengths only)."""

    block_size: int
    active: bool = False
    _latest: Any = None
    _steps: int = 0
    _best_used: int = -1
    _best_lengths: dict[str, int] = field(default_factory=dict)
    _total_blocks: int = 0

    def on_stats(self, stats: Any) -> None:
        if self.active:
            self._latest = stats.scheduler

    def reset(self) -> None:
        self._latest, self._steps, self._best_used, self._best_lengths, self._total_blocks = (
            None,
            0,
            -1,
            {},
            0,
        )

    def after_step(self, live_lengths: dict[str, int]) -> None:
        """`live_lengths`: tokens in the cache per unfinished request that has produced output."""
        sched = self._latest
        if sched is None:
            return
        self._steps += 1
        self._total_blocks = sched.num_total_blocks
        # A running request mid-prefill (no output yet) holds blocks we can't count: skip such steps. Among
        # steps with the most blocks in use, the latest holds the most tokens: that is the busiest.
        if sched.num_running_reqs != len(live_lengths) or sched.num_used_blocks < self._best_used:
            return
        self._best_used = sched.num_used_blocks
        self._best_lengths = dict(live_lengths)

    def report(self, tokens_of: dict[str, list[int]]) -> KVUsageReport | None:
        """`tokens_of`: each request's final prompt + generated ids (the busiest step saw a prefix of them)."""
        if self._best_used <= 0:
            return None
        sequences = [tokens_of[rid][:length] for rid, length in self._best_lengths.items()]
        return KVUsageReport(
            block_size=self.block_size,
            num_total_blocks=self._total_blocks,
            busiest_used_blocks=self._best_used,
            logical_tokens=sum(len(s) for s in sequences),
            physical_tokens=physical_token_count(sequences, self.block_size),
            steps_seen=self._steps,
        )
