"""The front end's half of a step: turns the core's per-sequence tokens into `RequestOutput`s.

It holds every open request's state (engine/request_state.py): detokenizes new tokens, matches stop strings (a
match ends that sequence here; the caller tells the core to free it), collects logprobs, and times finished
requests for the metrics. Used in-process by `LLMEngine` and in the server by `EngineCoreClient`.
"""

from __future__ import annotations

import time
from typing import Any

from pagedserve.core.stats import FinishedRequestStats
from pagedserve.engine.core_messages import SequenceOutput
from pagedserve.engine.request_state import RequestState
from pagedserve.outputs import RequestOutput


class OutputProcessor:
    def __init__(self, tokenizer: Any, stream_outputs: bool = True) -> None:
        """stream_outputs=False: only finished requests' outputs are built (offline use, saves copies)."""
        self.tokenizer = tokenizer
        self.stream_outputs = stream_outputs
        self.requests: dict[str, RequestState] = {}

    def add_request(self, state: RequestState) -> None:
        self.requests[state.request_id] = state

    def abort_requests(self, request_ids: list[str]) -> list[FinishedRequestStats]:
        """Forget these requests; returns their stats (finish reason "abort") for the metrics."""
        now = time.time()
        stats = []
        for request_id in request_ids:
            state = self.requests.pop(request_id, None)
            if state is None:
                continue
            for i, reason in enumerate(state.finish_reasons):
                if reason is None:
                    state.finish_reasons[i] = "abort"
            stats.append(state.finished_stats("abort", now))
        return stats

    def process(
        self, outputs: list[SequenceOutput]
    ) -> tuple[list[RequestOutput], list[str], list[FinishedRequestStats]]:
        """(outputs to deliver, ids of sequences a stop string ended, stats of the requests that finished)."""
        now = time.time()
        touched: dict[str, RequestState] = {}
        stopped: list[str] = []
        for out in outputs:
            state = self.requests.get(out.request_id)
            index = out.sample_index
            if state is None or state.finish_reasons[index] is not None:
                continue  # aborted, or ended by a stop string while the core ran one more step
            if out.prompt_logprobs is not None:
                state.add_prompt_logprobs(out.prompt_logprobs, self.tokenizer)
            sequence = state.sequences[index]
            sequence.update(out)
            if not out.new_token_ids:
                # Ended by the core before any token: its adapter or its grammar failed to load.
                if out.finish_reason is not None:
                    state.finish_reasons[index] = out.finish_reason
                    touched[state.request_id] = state
                continue
            touched[state.request_id] = state
            for entry in out.logprobs or ():
                state.add_logprobs(index, entry, self.tokenizer)
            detok = state.detokenizers[index]
            if detok is not None:
                stop = detok.update(out.new_token_ids)
                if stop is not None and len(sequence.output_token_ids) >= state.params.min_tokens:
                    state.finish_reasons[index] = "stop"
                    sequence.stop_reason = stop
                    if out.finish_reason is None:
                        sequence.finished_time = now
                        stopped.append(out.seq_id)
                    continue
            if out.finish_reason is not None:
                state.finish_reasons[index] = out.finish_reason
        results = []
        finished = []
        for state in touched.values():
            if self.stream_outputs or state.finished:
                results.append(state.make_output())
            if state.finished:
                del self.requests[state.request_id]
                reasons = [r for r in state.finish_reasons if r]
                reason = "stop" if "stop" in reasons else reasons[0]
                finished.append(state.finished_stats(reason, now))
        return results, stopped, finished
