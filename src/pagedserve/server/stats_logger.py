"""The periodic stats log line (vLLM's): throughput, running/waiting, preemptions, KV usage, prefix hit rate, and
speculative decoding's acceptance when drafts were verified."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from pagedserve.core.stats import EngineStats

logger = logging.getLogger("pagedserve")
STATS_LOG_INTERVAL_S = 5.0


class StatsLogger:
    """Accumulates engine stats (engine thread) and logs one line per interval (event loop)."""

    def __init__(self, interval: float = STATS_LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._reset()
        self.running = self.waiting = 0
        self.kv_usage = 0.0
        self._last_log = time.monotonic()
        self._idle_logged = True

    def _reset(self) -> None:
        self.prompt_tokens = self.generation_tokens = self.preemptions = 0
        self.prefix_queries = self.prefix_hits = 0
        self.drafts = self.draft_tokens = self.accepted_tokens = 0

    def observe(self, stats: EngineStats) -> None:
        with self._lock:
            it = stats.iteration
            self.prompt_tokens += it.num_prompt_tokens
            self.generation_tokens += it.num_generation_tokens
            self.preemptions += it.num_preemptions
            self.prefix_queries += it.prefix_cache_queries
            self.prefix_hits += it.prefix_cache_hits
            self.drafts += it.num_drafts
            self.draft_tokens += it.num_draft_tokens
            self.accepted_tokens += it.num_accepted_tokens
            self.running = stats.scheduler.num_running_reqs
            self.waiting = stats.scheduler.num_waiting_reqs
            self.kv_usage = stats.scheduler.kv_cache_usage

    def line(self) -> str | None:
        """The line for the interval just ended, or None when idle and already said so."""
        now = time.monotonic()
        with self._lock:
            elapsed = max(now - self._last_log, 1e-9)
            active = self.prompt_tokens or self.generation_tokens or self.running or self.waiting
            if not active and self._idle_logged:
                self._last_log = now
                return None
            self._idle_logged = not active
            hit_rate = 100.0 * self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
            text = (
                f"Avg prompt throughput: {self.prompt_tokens / elapsed:.1f} tokens/s, "
                f"Avg generation throughput: {self.generation_tokens / elapsed:.1f} tokens/s, "
                f"Running: {self.running} reqs, Waiting: {self.waiting} reqs, "
                f"Preemptions: {self.preemptions}, KV cache usage: {100.0 * self.kv_usage:.1f}%, "
                f"Prefix cache hit rate: {hit_rate:.1f}%"
            )
            if (
                self.drafts
            ):  # speculative decoding: tokens a verified draft gave, and the share of draft tokens kept
                text += (
                    f", Spec decode mean acceptance length: {1 + self.accepted_tokens / self.drafts:.2f}, "
                    f"Draft acceptance rate: {100.0 * self.accepted_tokens / self.draft_tokens:.1f}%"
                )
            self._reset()
            self._last_log = now
        return text

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            text = self.line()
            if text is not None:
                logger.info(text)
