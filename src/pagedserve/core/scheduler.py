"""Continuous batching with one token budget per step (vLLM V1's model).

Running sequences are served first (decode: 1 token; an unfinished chunked prefill: the rest, up to the budget),
then waiting ones in arrival order, prefills chunked to what is left of the budget. When blocks run out, the most
recently admitted running sequence is preempted by recompute: its blocks are freed, its generated tokens kept, and
it goes back to the front of the waiting queue.

Under the priority policy (vLLM's `--scheduling-policy priority`) the waiting queue is kept in (priority, arrival)
order, a preempted sequence returns to its place in that order, and the running sequence preempted first is the
one with the largest (priority, arrival). As in vLLM, a better waiting request does not preempt running ones: it
is admitted first as soon as there is room.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable

from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler_output import NewSequence, ScheduledSequence, SchedulerOutput
from pagedserve.core.sequence import Sequence, SequenceStatus
from pagedserve.core.stats import SchedulerStats


class Scheduler:
    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        long_prefill_token_threshold: int = 0,
        policy: str = "fcfs",
        max_loras: int = 0,
        chunked_prefill: bool = True,
    ) -> None:
        """max_loras: most LoRA adapters among the running sequences (--max-loras); 0 without --enable-lora.
        chunked_prefill False: a waiting sequence joins only when its whole prefill fits the step's budget."""
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        if long_prefill_token_threshold < 0:
            raise ValueError(f"long_prefill_token_threshold must be >= 0, got {long_prefill_token_threshold}")
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy must be fcfs or priority, got {policy!r}")
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.policy = policy
        self.kv = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.max_loras = max_loras
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.sequences: dict[str, Sequence] = {}
        self.total_preemptions = 0
        # Sequences the runner holds state for, and those of them finished since the last step.
        self._in_runner: set[str] = set()
        self._finished_in_runner: list[str] = []
        self._resumed: set[str] = set()  # preempted sequences whose next step sends their history

    # ---- admission -------------------------------------------------------------------------------------------
    def max_tokens_fit(self, num_tokens: int) -> bool:
        """Whether a sequence of `num_tokens` could ever be held by the whole cache."""
        return self.kv.blocks_for_sequence(num_tokens, self.max_num_batched_tokens) <= self.kv.num_blocks

    def add_sequence(self, seq: Sequence) -> None:
        if seq.seq_id in self.sequences:
            raise ValueError(f"duplicate sequence id {seq.seq_id!r}")
        self.sequences[seq.seq_id] = seq
        if self.policy == "priority":
            self._insert_by_priority(seq)
        else:
            self.waiting.append(seq)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_sequences(self) -> bool:
        return bool(self.sequences)

    # ---- one step --------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_seq_ids=self._finished_in_runner)
        self._finished_in_runner = []
        budget = self.max_num_batched_tokens
        # A sequence's tokens in one step: the threshold (vLLM's long_prefill_token_threshold), or the whole budget.
        per_sequence = self.long_prefill_token_threshold or budget
        now = time.time()
        scheduled: dict[str, int] = {}  # running sequences scheduled so far this step -> their tokens
        i = 0
        while i < len(self.running) and budget > 0:
            sequence = self.running[i]
            num_new = min(sequence.num_tokens - sequence.num_computed_tokens, budget, per_sequence)
            drafts = sequence.spec_token_ids
            if drafts and num_new == 1:  # a decode with a draft to verify: as many of it as the budget takes
                num_new += min(len(drafts), budget - 1)
            while True:
                if self.kv.allocate_slots(sequence, num_new) is not None:
                    break
                if num_new > 1 and drafts:  # out of blocks: drop the draft before preempting anyone
                    num_new = 1
                    continue
                victim = self._pick_victim()
                position = self.running.index(victim)
                del self.running[position]
                self._preempt(victim, out)
                if position < i:  # already scheduled this step (priority policy): its tokens come back
                    i -= 1
                    budget += scheduled.pop(victim.seq_id)
                if victim is sequence:
                    break
            if sequence.status != SequenceStatus.RUNNING:
                continue  # preempted itself; the sequence now at position i (if any) is next
            self._add_scheduled(out, sequence, num_new)
            sequence.spec_token_ids = []
            scheduled[sequence.seq_id] = num_new
            budget -= num_new
            i += 1

        if not out.preempted_seq_ids:
            self._admit_waiting(out, budget, per_sequence, now)
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int, per_sequence: int, now: float) -> None:
        """Waiting sequences join in queue order while the budget, max_num_seqs and the blocks allow. One whose
        adapter would be one too many (--max-loras) is passed over and keeps its place (vLLM's rule)."""
        loras = {s.lora_id for s in self.running if s.lora_id}
        index = 0
        while index < len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            sequence = self.waiting[index]
            lora_id = sequence.lora_id
            if lora_id and lora_id not in loras and len(loras) >= self.max_loras:
                index += 1
                continue
            computed_blocks, num_cached = [], 0
            if sequence.num_computed_tokens == 0:
                computed_blocks, num_cached = self.kv.get_computed_blocks(sequence)
            remaining = sequence.num_tokens - sequence.num_computed_tokens - num_cached
            if not self.chunked_prefill and remaining > budget:
                # Whole or not at all; the queue waits behind it (no starvation by shorter prompts), where vLLM V1
                # lets later ones pass.
                break
            num_new = min(remaining, budget, per_sequence)
            if self.kv.allocate_slots(sequence, num_new, computed_blocks) is None:
                break
            del self.waiting[index]
            if lora_id:
                loras.add(lora_id)
            if sequence.num_computed_tokens == 0:
                self.kv.record_prefix_lookup(sequence.num_tokens, num_cached)
            sequence.num_computed_tokens += num_cached
            if sequence.num_cached_tokens < 0:
                sequence.num_cached_tokens = num_cached
            if sequence.first_scheduled_time is None:
                sequence.first_scheduled_time = now
            sequence.status = SequenceStatus.RUNNING
            self.running.append(sequence)
            self._add_scheduled(out, sequence, num_new)
            budget -= num_new

    def _add_scheduled(self, out: SchedulerOutput, sequence: Sequence, num_new: int) -> None:
        start = sequence.num_computed_tokens
        known = min(num_new, sequence.num_tokens - start)  # the rest are draft tokens
        samples = start + known == sequence.num_tokens
        if sequence.seq_id not in self._in_runner:
            self._in_runner.add(sequence.seq_id)
            out.new_sequences.append(
                NewSequence(
                    sequence.seq_id,
                    sequence.prompt_token_ids,
                    sequence.sampling_params,
                    sequence.sample_index,
                    sequence.lora,
                )
            )
        out.sequences.append(
            ScheduledSequence(
                sequence.seq_id,
                start,
                sequence.all_token_ids[start : start + known] + sequence.spec_token_ids[: num_new - known],
                self.kv.get_block_ids(sequence.seq_id),
                samples,
                num_new - known,
                [self.kv.get_block_ids(sequence.seq_id, group) for group in range(1, self.kv.num_groups)],
                sequence.all_token_ids[:start] if sequence.seq_id in self._resumed else None,
            )
        )
        self._resumed.discard(sequence.seq_id)
        prompt_part = max(
            0,
            min(sequence.num_prompt_tokens, sequence.num_computed_tokens + num_new)
            - sequence.num_computed_tokens,
        )
        out.num_prefill_tokens += prompt_part
        out.num_decode_tokens += num_new - prompt_part

    def _preempt(self, sequence: Sequence, out: SchedulerOutput) -> None:
        scheduled = any(s.seq_id == sequence.seq_id for s in out.sequences)  # this step (priority policy)
        self.kv.free(sequence, sequence.num_computed_tokens if scheduled else None)
        sequence.status = SequenceStatus.PREEMPTED
        sequence.num_computed_tokens = 0
        sequence.spec_token_ids = []
        sequence.num_preemptions += 1
        self.total_preemptions += 1
        if sequence.seq_id in self._in_runner:
            self._resumed.add(sequence.seq_id)
        out.num_preemptions += 1
        out.preempted_seq_ids.append(sequence.seq_id)
        if self.policy == "priority":
            self._insert_by_priority(sequence)
        else:
            self.waiting.appendleft(sequence)
        # Drop it from this step if it was already scheduled earlier in the loop.
        out.sequences = [s for s in out.sequences if s.seq_id != sequence.seq_id]

    def _pick_victim(self) -> Sequence:
        """The running sequence to preempt: the most recently admitted (fcfs), or the largest (priority, arrival)."""
        if self.policy == "priority":
            return max(reversed(self.running), key=_priority_key)
        return self.running[-1]

    def _insert_by_priority(self, sequence: Sequence) -> None:
        """Into the waiting queue at its (priority, arrival) place, after equal keys (O(waiting), bounded by the
        server's queue cap)."""
        keys = [_priority_key(s) for s in self.waiting]
        self.waiting.insert(bisect.bisect_right(keys, _priority_key(sequence)), sequence)

    # ---- after the model ran ---------------------------------------------------------------------------------
    def update_from_output(
        self, out: SchedulerOutput, sampled_token_ids: dict[str, list[int]]
    ) -> tuple[list[Sequence], list[Sequence]]:
        """Advance progress; append sampled tokens; stop on EOS / stop ids / length.

        A sequence that verified draft tokens gets the accepted ones and one more (1 + accepted tokens): the
        rejected drafts' positions are computed again (their K/V slots are overwritten by the next step). Tokens
        after one that stops the sequence are dropped. `num_new_output_tokens` says how many each one got.

        Returns (sequences that got new tokens, sequences that finished this step).
        """
        now = time.time()
        progressed: list[Sequence] = []
        finished: list[Sequence] = []
        for seq in out.sequences:
            sequence = self.sequences.get(seq.seq_id)
            if sequence is None or sequence.is_finished:
                continue
            sequence.num_computed_tokens += seq.num_new_tokens
            if not seq.samples:
                continue
            token_ids = sampled_token_ids[sequence.seq_id]
            if not 1 <= len(token_ids) <= 1 + seq.num_draft_tokens:
                raise ValueError(
                    f"sequence {seq.seq_id!r} got {len(token_ids)} tokens for {seq.num_draft_tokens} draft tokens"
                )
            sequence.num_computed_tokens -= seq.num_draft_tokens - (len(token_ids) - 1)  # the rejected drafts
            sequence.num_new_output_tokens = 0
            status = None
            for token_id in token_ids:
                sequence.append_output_token(token_id)
                sequence.num_new_output_tokens += 1
                status = self._check_stop(sequence, token_id)
                if status is not None:
                    break
            if sequence.first_token_time is None:
                sequence.first_token_time = now
            elif sequence.last_token_time is not None:
                sequence.last_inter_token_latency = now - sequence.last_token_time
            sequence.last_token_time = now
            progressed.append(sequence)
            if status is not None:
                self.finish(sequence, status)
                finished.append(sequence)
        return progressed, finished

    def _check_stop(self, sequence: Sequence, token_id: int) -> SequenceStatus | None:
        params = sequence.sampling_params
        if sequence.num_output_tokens >= getattr(params, "min_tokens", 0):
            if not getattr(params, "ignore_eos", False) and token_id in sequence.eos_token_ids:
                sequence.stop_reason = None
                return SequenceStatus.FINISHED_STOPPED
            if token_id in (getattr(params, "stop_token_ids", None) or ()):
                sequence.stop_reason = token_id
                return SequenceStatus.FINISHED_STOPPED
        if sequence.num_output_tokens >= sequence.max_tokens or sequence.num_tokens >= self.max_model_len:
            return SequenceStatus.FINISHED_LENGTH
        return None

    def finish(self, sequence: Sequence, status: SequenceStatus) -> None:
        """Finish (or abort) a sequence in any state and return its blocks."""
        if sequence.seq_id not in self.sequences:
            return
        del self.sequences[sequence.seq_id]
        if sequence.seq_id in self._in_runner:
            self._in_runner.discard(sequence.seq_id)
            self._finished_in_runner.append(sequence.seq_id)
        self._resumed.discard(sequence.seq_id)  # aborted while waiting to resume: nothing bounded left behind
        if sequence.status == SequenceStatus.RUNNING:
            self.running.remove(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        sequence.status = status
        sequence.finished_time = time.time()
        self.kv.free(sequence)

    def finish_sequences(self, seq_ids: Iterable[str], status: SequenceStatus) -> list[Sequence]:
        done = []
        for seq_id in seq_ids:
            sequence = self.sequences.get(seq_id)
            if sequence is not None:
                self.finish(sequence, status)
                done.append(sequence)
        return done

    def make_stats(self) -> SchedulerStats:
        """Gauges for this moment, and the prefix-cache lookups since the last call."""
        pool = self.kv.pool
        prefix = self.kv.prefix_cache_stats.reset()
        return SchedulerStats(
            num_running_reqs=len({s.request_id for s in self.running}),
            num_waiting_reqs=len({s.request_id for s in self.waiting}),
            kv_cache_usage=pool.usage(),
            num_used_blocks=pool.num_used_blocks,
            num_total_blocks=pool.num_blocks,
            num_kv_tokens=sum(s.num_computed_tokens for s in self.running),
            prefix_cache_queries=prefix.queries,
            prefix_cache_hits=prefix.hits,
            running_lora_adapters=_lora_names(self.running) if self.max_loras else [],
            waiting_lora_adapters=_lora_names(self.waiting) if self.max_loras else [],
        )

    def check_invariants(self) -> None:
        self.kv.check_invariants()
        for seq_id in self.kv.req_to_blocks:
            assert seq_id in self.sequences, f"blocks held by unknown sequence {seq_id}"
        assert self._in_runner <= set(self.sequences), "runner state for a sequence the scheduler forgot"
        if not self.sequences:
            assert self.kv.pool.num_used_blocks == 0, "blocks leaked with no requests"


def _lora_names(sequences: Iterable[Sequence]) -> list[str]:
    return sorted({s.lora.lora_name for s in sequences if s.lora is not None})


def _priority_key(sequence: Sequence) -> tuple[int, float]:
    return sequence.priority, sequence.arrival_time
