"""The engine loop: add_request / step / abort over the scheduler and the model runner.

Not thread-safe: one thread drives it (the offline LLM class, or the server's AsyncEngine thread).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pagedserve import kv_memory
from pagedserve.config import EngineConfig
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.sequence import Sequence, SequenceStatus
from pagedserve.core.stats import EngineStats, IterationStats
from pagedserve.distributed.partition import check_heads
from pagedserve.engine.chat import apply_chat_template
from pagedserve.engine.detokenizer import IncrementalDetokenizer
from pagedserve.engine.prompts import PromptInput, resolve_prompt
from pagedserve.engine.request_state import RequestState
from pagedserve.errors import ContextLengthError, InvalidRequestError
from pagedserve.outputs import EngineInfo, RequestOutput
from pagedserve.sampling_params import SamplingParams
from pagedserve.worker.executor import RunnerSpec, dtype_name, make_executor
from pagedserve.worker.model_runner import has_gguf_panel_kernels, resolve_device, resolve_dtype

logger = logging.getLogger("pagedserve")

StatsListener = Callable[[EngineStats], None]


class LLMEngine:
    def __init__(self, config: EngineConfig, stream_outputs: bool = True) -> None:
        """stream_outputs=False: step() returns only finished requests' outputs (offline use, saves copies)."""
        from pagedserve.models.loader import load_tokenizer, resolve_model_source, resolve_quantization

        self.config = config
        self.stream_outputs = stream_outputs
        mc, cc, sc = config.model, config.cache, config.scheduler
        config.parallel.validate()
        if config.parallel.headless:
            raise ValueError(
                "headless: this node runs workers only (pagedserve serve --headless), not an engine"
            )
        source = resolve_model_source(mc.model, mc.load_format)
        device = resolve_device(mc.device)
        quantization = resolve_quantization(
            mc.quantization, source.format, has_gguf_panel_kernels(device), source.quantization_method
        )
        if source.format == "gguf" and mc.quantization in (None, ""):
            logger.info(
                "quantization: %s", "gguf (Q4_0/Q4_1/Q8_0 blocks kept, multiplied by this CPU's kernels)"
                if quantization else "none (GGUF weights dequantized at load: no kernels here multiply the blocks "
                "fast past a few rows; --quantization gguf keeps them)",
            )  # fmt: skip
        self.source = source
        self.tokenizer = load_tokenizer(source, mc.tokenizer)
        self.chat_template = _read_chat_template(mc.chat_template)
        hf_config = source.hf_config
        max_positions = int(getattr(hf_config, "max_position_embeddings", 2048))
        max_model_len = mc.max_model_len or max_positions
        if max_model_len < 1 or max_model_len > max_positions:
            raise ValueError(
                f"max_model_len must be in [1, {max_positions}] for this model, got {max_model_len}"
            )
        quantized_source = source.format == "gguf" or source.quantization_method is not None
        dtype, weight_dtype = resolve_dtype(mc.dtype, hf_config, quantized_source, device, quantization)
        tp_size = config.parallel.tensor_parallel_size
        num_heads = hf_config.num_attention_heads
        check_heads(num_heads, getattr(hf_config, "num_key_value_heads", None) or num_heads, tp_size)
        spec = RunnerSpec(mc, cc, max_model_len, quantization, dtype_name(dtype), dtype_name(weight_dtype))
        self.executor = make_executor(spec, config.parallel, source)
        runner = self.executor.info
        self.kv_cache_manager = KVCacheManager(runner.num_blocks, cc.block_size, cc.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv_cache_manager,
            sc.max_num_seqs,
            sc.max_num_batched_tokens,
            max_model_len,
            sc.long_prefill_token_threshold,
        )
        eos = set(source.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(eos)
        self.info = EngineInfo(
            model_name=source.name,
            max_model_len=max_model_len,
            vocab_size=hf_config.vocab_size,
            block_size=cc.block_size,
            num_kv_blocks=runner.num_blocks,
            kv_cache_bytes=runner.kv_cache_bytes,
            enable_prefix_caching=cc.enable_prefix_caching,
            dtype=str(dtype).replace("torch.", ""),
            weight_dtype=str(weight_dtype).replace("torch.", ""),
            device=str(device),
            eos_token_ids=sorted(eos),
            cpu_kernels=runner.cpu_kernels,
            quantization=quantization or "",
            weight_bytes=runner.weight_bytes,
            kv_cache_dtype=runner.kv_cache_dtype,
        )
        self.requests: dict[str, RequestState] = {}
        self._seq_to_request: dict[str, RequestState] = {}
        self._listeners: list[StatsListener] = []
        self._pending_finished: list[Any] = []
        kv_tokens = runner.num_blocks * cc.block_size
        logger.info(
            "engine ready: model=%s dtype=%s weights=%s quantization=%s device=%s tensor_parallel_size=%d "
            "max_model_len=%d weights %.0f MiB, kv_blocks=%d (%s, %.0f MiB, %d tokens): maximum concurrency %d "
            "sequences of max_model_len (the arithmetic of `pagedserve plan`, kv_memory.py)",
            source.name, self.info.dtype, self.info.weight_dtype, quantization or "none", device, tp_size,
            max_model_len,
            runner.weight_bytes / 2**20, runner.num_blocks, self.info.kv_cache_dtype,
            runner.kv_cache_bytes / 2**20, kv_tokens,
            kv_memory.max_concurrency(kv_tokens, max_model_len, cc.block_size),
        )  # fmt: skip

    # ---- requests ----------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[int]:
        return apply_chat_template(
            self.tokenizer, messages, add_generation_prompt, chat_template or self.chat_template
        )

    def add_request(
        self, request_id: str, prompt: PromptInput, params: SamplingParams, arrival_time: float | None = None
    ) -> None:
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequestError("request_id must be a non-empty string", param="request_id")
        if request_id in self.requests:
            raise InvalidRequestError(f"duplicate request id {request_id!r}", param="request_id")
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", param="sampling_params")
        prompt_text, prompt_ids = resolve_prompt(self.tokenizer, prompt, self.info.vocab_size)
        num_prompt = len(prompt_ids)
        max_len = self.info.max_model_len
        if num_prompt >= max_len:
            raise ContextLengthError(
                max_len, num_prompt + (params.max_tokens or 0), num_prompt, param="prompt"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else max_len - num_prompt
        if num_prompt + max_tokens > max_len:
            raise ContextLengthError(max_len, num_prompt + max_tokens, num_prompt, param="max_tokens")
        if not self.scheduler.max_tokens_fit(num_prompt + max_tokens):
            raise InvalidRequestError(
                f"prompt + max_tokens = {num_prompt + max_tokens} tokens can never fit the KV cache "
                f"({self.info.num_kv_blocks} blocks of {self.info.block_size} tokens)",
                param="max_tokens",
                code="kv_cache_too_small",
            )
        params = copy.copy(params)
        stops = set(params.stop_token_ids or [])
        params.all_stop_token_ids = stops if params.ignore_eos else stops | self.eos_token_ids
        arrival = arrival_time if arrival_time is not None else time.time()
        sequences = [
            Sequence(
                request_id if params.n == 1 else f"{request_id}#{i}",
                prompt_ids,
                params,
                arrival,
                max_tokens,
                self.eos_token_ids,
                request_id=request_id,
                sample_index=i,
            )
            for i in range(params.n)
        ]
        detokenizers = [
            IncrementalDetokenizer(self.tokenizer, prompt_ids, params) if params.detokenize else None
            for _ in sequences
        ]
        state = RequestState(request_id, prompt_text, prompt_ids, params, arrival, sequences, detokenizers)
        self.requests[request_id] = state
        for seq in sequences:
            self._seq_to_request[seq.seq_id] = state
            self.scheduler.add_sequence(seq)

    def abort_request(self, request_ids: Iterable[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        now = time.time()
        for request_id in request_ids:
            state = self.requests.pop(request_id, None)
            if state is None:
                continue
            seq_ids = [s.seq_id for s in state.sequences]
            self.scheduler.finish_sequences(seq_ids, SequenceStatus.FINISHED_ABORTED)
            for i, reason in enumerate(state.finish_reasons):
                if reason is None:
                    state.finish_reasons[i] = "abort"
            for seq_id in seq_ids:
                self._seq_to_request.pop(seq_id, None)
            self._pending_finished.append(state.finished_stats("abort", now))

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def add_stats_listener(self, listener: StatsListener) -> None:
        self._listeners.append(listener)

    # ---- one step ----------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched_out = self.scheduler.schedule()
        stats = IterationStats(timestamp=time.time())
        stats.finished_requests, self._pending_finished = self._pending_finished, []
        stats.num_preemptions = sched_out.num_preemptions
        outputs: list[RequestOutput] = []
        if not sched_out.is_empty:
            result = self.executor.execute(sched_out)
            progressed, finished = self.scheduler.update_from_output(sched_out, result.sampled_token_ids)
            stats.num_prompt_tokens = sched_out.num_prefill_tokens
            stats.num_tokens_in_step = sched_out.total_num_tokens
            outputs = self._process(sched_out, result, progressed, finished, stats)
        elif sched_out.finished_seq_ids:
            self.executor.execute(sched_out)  # only drops the runner's state for them
        self._emit_stats(stats)
        return outputs

    def _process(self, sched_out, result, progressed, finished, stats: IterationStats) -> list[RequestOutput]:
        now = time.time()
        touched: dict[str, RequestState] = {}
        for seq_id, entries in result.prompt_logprobs.items():
            state = self._seq_to_request[seq_id]
            if state.sequences[0].seq_id == seq_id:
                state.add_prompt_logprobs(entries, self.tokenizer)
        finished_ids = {r.seq_id for r in finished}
        for seq in progressed:
            state = self._seq_to_request[seq.seq_id]
            touched[state.request_id] = state
            index = seq.sample_index
            stats.num_generation_tokens += 1
            if seq.num_output_tokens == 1:
                stats.time_to_first_tokens.append(now - seq.arrival_time)
            elif seq.last_inter_token_latency is not None:
                stats.inter_token_latencies.append(seq.last_inter_token_latency)
            if seq.seq_id in result.logprobs:
                state.add_logprobs(index, result.logprobs[seq.seq_id], self.tokenizer)
            detok = state.detokenizers[index]
            if detok is not None:
                stop = detok.update([seq.output_token_ids[-1]])
                if stop is not None and seq.num_output_tokens >= state.params.min_tokens:
                    if seq.seq_id not in finished_ids:
                        self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
                        finished_ids.add(seq.seq_id)
                    seq.status = SequenceStatus.FINISHED_STOPPED
                    seq.stop_reason = stop
            if seq.seq_id in finished_ids:
                state.finish_reasons[index] = seq.status.finish_reason
        outputs = []
        for state in touched.values():
            if self.stream_outputs or state.finished:
                outputs.append(state.make_output())
            if state.finished:
                self._finish_state(state, now, stats)
        return outputs

    def _finish_state(self, state: RequestState, now: float, stats: IterationStats) -> None:
        self.requests.pop(state.request_id, None)
        for seq in state.sequences:
            self._seq_to_request.pop(seq.seq_id, None)
        reasons = [r for r in state.finish_reasons if r]
        reason = "stop" if "stop" in reasons else reasons[0] if reasons else "stop"
        stats.finished_requests.append(state.finished_stats(reason, now))

    def _emit_stats(self, iteration: IterationStats) -> None:
        sched = self.scheduler.make_stats()  # also when nobody listens: it resets the prefix-cache counts
        iteration.prefix_cache_queries, iteration.prefix_cache_hits = (
            sched.prefix_cache_queries,
            sched.prefix_cache_hits,
        )
        if not self._listeners:
            return
        stats = EngineStats(sched, iteration)
        for listener in self._listeners:
            listener(stats)

    def shutdown(self) -> None:
        """Stops the executor's worker processes (nothing to do in-process); the engine cannot step after it."""
        self.executor.shutdown()

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()
        assert set(self._seq_to_request) == {s.seq_id for st in self.requests.values() for s in st.sequences}


def _read_chat_template(value: str | None) -> str | None:
    if value is None:
        return None
    from pathlib import Path

    path = Path(value)
    if len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    return value
