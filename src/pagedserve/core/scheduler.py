"""Continuous batching with one token budget per step (vLLM V1's model).

Running sequences are served first (decode: 1 token; an unfinished chunked prefill: the rest, up to the budget),
then waiting ones in arrival order, prefills chunked to what is left of the budget. When blocks run out, the most
recently admitted running sequence is preempted by recompute: its blocks are freed, its generated tokens kept, and
it goes back to the front of the waiting queue.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.request import Request, RequestStatus
from pagedserve.core.scheduler_output import ScheduledSequence, SchedulerOutput


class Scheduler:
    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
    ) -> None:
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        self.kv = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.total_preemptions = 0

    # ---- admission -------------------------------------------------------------------------------------------
    def max_tokens_fit(self, num_tokens: int) -> bool:
        """Whether a sequence of `num_tokens` could ever be held by the whole cache."""
        return self.kv.blocks_needed(num_tokens) <= self.kv.num_blocks

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step --------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        now = time.time()
        scheduled: list[Request] = []
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while True:
                if self.kv.allocate_slots(request, num_new) is not None:
                    break
                victim = self.running.pop()  # most recently admitted
                self._preempt(victim, out)
                if victim is request:
                    break
            if request.status != RequestStatus.RUNNING:
                break  # preempted itself: nothing later in the list remains
            scheduled.append(request)
            self._add_scheduled(out, request, num_new)
            budget -= num_new
            i += 1

        if not out.preempted_request_ids:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                request = self.waiting[0]
                computed_blocks, num_cached = [], 0
                if request.num_computed_tokens == 0:
                    computed_blocks, num_cached = self.kv.get_computed_blocks(request)
                num_new = min(request.num_tokens - request.num_computed_tokens - num_cached, budget)
                if self.kv.allocate_slots(request, num_new, computed_blocks) is None:
                    break
                self.waiting.popleft()
                if request.num_computed_tokens == 0:
                    self.kv.record_prefix_lookup(request.num_tokens, num_cached)
                request.num_computed_tokens += num_cached
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = num_cached
                if request.first_scheduled_time is None:
                    request.first_scheduled_time = now
                request.status = RequestStatus.RUNNING
                self.running.append(request)
                self._add_scheduled(out, request, num_new)
                budget -= num_new
        return out

    def _add_scheduled(self, out: SchedulerOutput, request: Request, num_new: int) -> None:
        samples = request.num_computed_tokens + num_new == request.num_tokens
        out.sequences.append(
            ScheduledSequence(request, num_new, self.kv.get_block_ids(request.request_id), samples)
        )
        prompt_part = max(
            0,
            min(request.num_prompt_tokens, request.num_computed_tokens + num_new)
            - request.num_computed_tokens,
        )
        out.num_prefill_tokens += prompt_part
        out.num_decode_tokens += num_new - prompt_part

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.total_preemptions += 1
        out.num_preemptions += 1
        out.preempted_request_ids.append(request.request_id)
        self.waiting.appendleft(request)
        # Drop it from this step if it was already scheduled earlier in the loop.
        out.sequences = [s for s in out.sequences if s.request is not request]

    # ---- after the model ran ---------------------------------------------------------------------------------
    def update_from_output(
        self, out: SchedulerOutput, sampled_token_ids: dict[str, int]
    ) -> tuple[list[Request], list[Request]]:
        """Advance progress; append sampled tokens; stop on EOS / stop ids / length.

        Returns (sequences that got a new token, sequences that finished this step).
        """
        now = time.time()
        progressed: list[Request] = []
        finished: list[Request] = []
        for seq in out.sequences:
            request = seq.request
            if request.is_finished:
                continue
            request.num_computed_tokens += seq.num_new_tokens
            if not seq.samples:
                continue
            token_id = sampled_token_ids[request.request_id]
            request.append_output_token(token_id)
            if request.first_token_time is None:
                request.first_token_time = now
            elif request.last_token_time is not None:
                request.last_inter_token_latency = now - request.last_token_time
            request.last_token_time = now
            progressed.append(request)
            status = self._check_stop(request, token_id)
            if status is not None:
                self.finish(request, status)
                finished.append(request)
        return progressed, finished

    def _check_stop(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= getattr(params, "min_tokens", 0):
            if not getattr(params, "ignore_eos", False) and token_id in request.eos_token_ids:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token_id in (getattr(params, "stop_token_ids", None) or ()):
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Finish (or abort) a sequence in any state and return its blocks."""
        if request.request_id not in self.requests:
            return
        del self.requests[request.request_id]
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        request.finished_time = time.time()
        self.kv.free(request)

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> list[Request]:
        done = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is not None:
                self.finish(request, status)
                done.append(request)
        return done

    def num_kv_token_slots_in_use(self) -> int:
        return sum(r.num_computed_tokens for r in self.running)

    def check_invariants(self) -> None:
        self.kv.check_invariants()
        for request_id in self.kv.req_to_blocks:
            assert request_id in self.requests, f"blocks held by unknown request {request_id}"
        if not self.requests:
            assert self.kv.pool.num_used_blocks == 0, "blocks leaked with no requests"
