"""The engine core: scheduler + executor. Takes requests in token ids, returns each step's new tokens as plain data.

It knows nothing of text: tokenizing, detokenizing, stop strings and building `RequestOutput`s are the front end's
(engine/input_processor.py, engine/output_processor.py). The offline `LLM` runs it in its own process and thread;
the server runs it in an engine-core process (engine/core_proc.py) so that the event loop and the model never
share a GIL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pagedserve import kv_memory
from pagedserve.config import EngineConfig
from pagedserve.core.kv_cache_manager import KVCacheManager
from pagedserve.core.scheduler import Scheduler
from pagedserve.core.sequence import Sequence, SequenceStatus
from pagedserve.core.stats import IterationStats
from pagedserve.distributed.partition import check_heads
from pagedserve.engine.core_messages import CoreOutputs, EngineCoreRequest, SequenceOutput
from pagedserve.engine.core_outputs import aborted_output, step_outputs
from pagedserve.engine.drafter import Drafter, count_drafts
from pagedserve.engine.model_rules import (
    classifier_labels,
    pooling_settings,
    pooling_task,
    resolve_max_model_len,
)
from pagedserve.model_config import resolved_runner
from pagedserve.models.registry import resolve_model_class
from pagedserve.outputs import EngineInfo
from pagedserve.structured_output.manager import StructuredOutputManager
from pagedserve.worker.device import resolve_device
from pagedserve.worker.dtypes import gguf_blocks_by_default, resolve_dtype
from pagedserve.worker.executor import RunnerSpec, dtype_name, make_executor

if TYPE_CHECKING:
    from pagedserve.models.loader import ModelSource

logger = logging.getLogger("pagedserve")


class EngineCore:
    def __init__(self, config: EngineConfig, source: ModelSource | None = None) -> None:
        """`source`: the model already resolved (the in-process front end resolves it for the tokenizer)."""
        from pagedserve.models.loader import resolve_model_source, resolve_quantization

        mc, cc, sc = config.model, config.cache, config.scheduler
        config.validate()
        lora = config.lora if config.lora.enable_lora else None
        if config.parallel.headless:
            raise ValueError(
                "headless: this node runs workers only (pagedserve serve --headless), not an engine"
            )
        source = source or resolve_model_source(
            mc.model, mc.load_format, revision=mc.revision, download_dir=mc.download_dir,
            hf_overrides=mc.hf_overrides,
        )  # fmt: skip
        device = resolve_device(mc.device)
        quantization = resolve_quantization(
            mc.quantization, source.format, gguf_blocks_by_default(device), source.quantization_method
        )
        if source.format == "gguf" and mc.quantization in (None, ""):
            logger.info(
                "quantization: %s", "gguf (Q4_0/Q4_1/Q8_0/Q4_K/Q6_K blocks kept, multiplied by this CPU's kernels)"
                if quantization else "none (GGUF weights dequantized at load: on a CUDA device or an AMX CPU "
                "a bfloat16 GEMM is the likelier winner past a few rows, elsewhere the block kernels did not "
                "build; --quantization gguf keeps the blocks, faster for one stream)",
            )  # fmt: skip
        hf_config = source.hf_config
        max_model_len = resolve_max_model_len(hf_config, mc.max_model_len, mc.disable_sliding_window)
        quantized_source = source.format == "gguf" or source.quantization_method is not None
        dtype, weight_dtype = resolve_dtype(mc.dtype, hf_config, quantized_source, device, quantization)
        tp_size = config.parallel.tensor_parallel_size
        num_heads = hf_config.num_attention_heads
        check_heads(num_heads, getattr(hf_config, "num_key_value_heads", None) or num_heads, tp_size)
        model_class = resolve_model_class(hf_config)
        refusal = getattr(model_class, "tensor_parallel_refusal", None)
        if tp_size > 1 and refusal:  # here, not in each rank: the first rank to exit would hide the reason
            raise ValueError(f"{model_class.__name__} runs without tensor parallelism: {refusal}")
        is_encoder = bool(getattr(model_class, "is_encoder", False))
        classifier = bool(getattr(model_class, "is_classifier", False))
        runner_kind = resolved_runner(mc, pooling_only=is_encoder or classifier)
        pooling_type, sc, cc = pooling_settings(runner_kind, classifier, is_encoder, source.path, sc, cc)
        if is_encoder and (tp_size > 1 or lora is not None or config.speculative is not None):
            raise ValueError(
                f"{hf_config.architectures[0]} (an encoder) runs without tensor parallelism, LoRA adapters or "
                "speculative decoding"
            )
        if classifier and (lora is not None or config.speculative is not None):
            raise ValueError(
                f"{hf_config.architectures[0]} (a sequence classifier) runs without LoRA adapters or speculative "
                "decoding"
            )
        token_budget = sc.token_budget(max_model_len)
        spec = RunnerSpec(
            mc, cc, max_model_len, quantization, dtype_name(dtype), dtype_name(weight_dtype),
            sc.max_num_seqs, token_budget, lora, pooling_type,
        )  # fmt: skip
        self.executor = make_executor(spec, config.parallel, source)
        runner = self.executor.info
        self.kv_cache_manager = KVCacheManager(
            runner.num_blocks, cc.block_size, cc.enable_prefix_caching, runner.kv_group_windows
        )
        self.scheduler = Scheduler(
            self.kv_cache_manager,
            sc.max_num_seqs,
            token_budget,
            max_model_len,
            sc.long_prefill_token_threshold,
            sc.scheduling_policy,
            lora.max_loras if lora else 0,
            chunked_prefill=sc.enable_chunked_prefill,
        )
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
            eos_token_ids=sorted(set(source.eos_token_ids)),  # the front end adds the tokenizer's
            cpu_kernels=runner.cpu_kernels,
            quantization=quantization or "",
            weight_bytes=runner.weight_bytes,
            kv_cache_dtype=runner.kv_cache_dtype,
            scheduling_policy=sc.scheduling_policy,
            num_speculative_tokens=config.speculative.num_speculative_tokens if config.speculative else 0,
            max_loras=lora.max_loras if lora else 0,
            max_logprobs=hf_config.vocab_size if mc.max_logprobs == -1 else mc.max_logprobs,
            runner=runner_kind,
            pooling_task=pooling_task(hf_config, classifier) if runner_kind == "pooling" else "",
            labels=classifier_labels(hf_config) if classifier else [],
            max_sequence_tokens=self.kv_cache_manager.longest_sequence(
                token_budget, max(max_model_len, runner.num_blocks * cc.block_size)
            ),
        )
        self._request_seqs: dict[str, list[str]] = {}  # request id -> its sequences' ids
        self.structured = StructuredOutputManager(hf_config.vocab_size)
        self._waiting_for_grammar: dict[str, EngineCoreRequest] = {}
        self.drafter = Drafter(config.speculative, max_model_len) if config.speculative else None
        kv_tokens = runner.num_blocks * cc.block_size
        kv = self.kv_cache_manager
        if kv.has_windows:
            # A window group's sequence holds its window (and a step's chunk), not max_model_len.
            concurrency = kv.num_blocks // kv.blocks_for_sequence(max_model_len, token_budget)
            windows = ", ".join("full" if w is None else f"window {w}" for w in runner.kv_group_windows)
            logger.info("KV cache groups (sliding-window layers free blocks out of the window): %s", windows)
        else:
            concurrency = kv_memory.max_concurrency(kv_tokens, max_model_len, cc.block_size)
        logger.info(
            "engine ready: model=%s dtype=%s weights=%s quantization=%s device=%s tensor_parallel_size=%d "
            "max_model_len=%d weights %.0f MiB, kv_blocks=%d (%s, %.0f MiB, %d tokens): maximum concurrency %d "
            "sequences of max_model_len (the arithmetic of `pagedserve plan`, kv_memory.py)",
            source.name, self.info.dtype, self.info.weight_dtype, quantization or "none", device, tp_size,
            max_model_len,
            runner.weight_bytes / 2**20, runner.num_blocks, self.info.kv_cache_dtype,
            runner.kv_cache_bytes / 2**20, kv_tokens, concurrency,
        )  # fmt: skip

    @property
    def worker_pids(self) -> list[int]:
        """This node's tensor-parallel worker processes (none in one process)."""
        return list(getattr(self.executor, "pids", []))

    # ---- requests ----------------------------------------------------------------------------------------------
    def set_grammar_tokenizer(self, definition: str, eos_token_ids: list[int]) -> None:
        self.structured.set_tokenizer(definition, eos_token_ids)

    def add_request(self, request: EngineCoreRequest) -> None:
        if request.grammar is not None:
            # Its sequences enter the scheduler once their matcher is built (off this thread).
            self.structured.submit(request.request_id, request.grammar)
            self._waiting_for_grammar[request.request_id] = request
            return
        self._add_sequences(request)

    def _add_sequences(self, request: EngineCoreRequest, matcher: Any = None) -> None:
        params = request.sampling_params
        n = params.n
        eos = frozenset(request.eos_token_ids)
        seq_ids = [request.request_id if n == 1 else f"{request.request_id}#{i}" for i in range(n)]
        self._request_seqs[request.request_id] = seq_ids
        for i, seq_id in enumerate(seq_ids):
            if matcher is not None:
                self.structured.add_sequence(
                    seq_id, matcher if i == 0 else matcher.deep_copy(), request.reasoning_gate
                )
            self.scheduler.add_sequence(
                Sequence(
                    seq_id,
                    request.prompt_token_ids,
                    params,
                    request.arrival_time,
                    request.max_tokens,
                    eos,
                    request_id=request.request_id,
                    sample_index=i,
                    cache_salt=request.cache_salt,
                    priority=request.priority,
                    lora=request.lora,
                )
            )

    def _admit_compiled(self) -> list[SequenceOutput]:
        """Requests whose grammar is built join the scheduler; those whose build failed end as aborted."""
        if not self._waiting_for_grammar:
            return []
        if not self.scheduler.has_unfinished_sequences():
            self.structured.wait_for_pending(0.02)  # nothing else to run: don't spin against the build
        ready, failed = self.structured.take_compiled()
        for request_id, matcher in ready:
            self._add_sequences(self._waiting_for_grammar.pop(request_id), matcher)
        outputs = []
        for request_id, _error in failed:
            request = self._waiting_for_grammar.pop(request_id)
            for i in range(request.sampling_params.n):
                seq_id = request_id if request.sampling_params.n == 1 else f"{request_id}#{i}"
                outputs.append(aborted_output(seq_id, request_id, i))
        return outputs

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            if self.structured.cancel(request_id):
                del self._waiting_for_grammar[request_id]
            seq_ids = self._request_seqs.pop(request_id, None)
            if seq_ids:
                self.scheduler.finish_sequences(seq_ids, SequenceStatus.FINISHED_ABORTED)
                self.structured.free(seq_ids)

    def finish_sequences(self, seq_ids: Iterable[str]) -> None:
        """Stop sequences the front end ended (a stop string matched); their blocks return at once."""
        for seq in self.scheduler.finish_sequences(seq_ids, SequenceStatus.FINISHED_STOPPED):
            self.structured.free([seq.seq_id])
            self._forget_if_done(seq.request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_sequences() or bool(self._waiting_for_grammar)

    def _forget_if_done(self, request_id: str) -> None:
        seq_ids = self._request_seqs.get(request_id)
        if seq_ids is not None and not any(s in self.scheduler.sequences for s in seq_ids):
            del self._request_seqs[request_id]

    # ---- one step ----------------------------------------------------------------------------------------------
    def step(self) -> CoreOutputs:
        failed = self._admit_compiled()
        sched_out = self.scheduler.schedule()
        iteration = IterationStats(timestamp=time.time(), num_preemptions=sched_out.num_preemptions)
        outputs: list[SequenceOutput] = []
        if not sched_out.is_empty:
            if self.structured.live_seq_ids:  # no per-step work when nothing is constrained
                sampling = [s.seq_id for s in sched_out.sequences if s.samples]
                drafts = {s.seq_id: s.token_ids[1:] for s in sched_out.sequences if s.num_draft_tokens}
                sched_out.grammar_bitmask = self.structured.bitmask(sampling, drafts)
            result = self.executor.execute(sched_out)
            if result.failed_seq_ids:  # their adapter could not be loaded: they end as aborted
                for seq in self.scheduler.finish_sequences(
                    result.failed_seq_ids, SequenceStatus.FINISHED_ABORTED
                ):
                    self.structured.free([seq.seq_id])
                    self._forget_if_done(seq.request_id)
                    failed.append(aborted_output(seq.seq_id, seq.request_id, seq.sample_index))
            progressed, finished = self.scheduler.update_from_output(sched_out, result.sampled_token_ids)
            if self.structured.live_seq_ids:  # also while reasoning: the gate watches for its end
                finished += self._advance_grammars(progressed)
            if self.drafter is not None:
                count_drafts(sched_out, result.sampled_token_ids, iteration)
                self.drafter.propose(progressed, self.scheduler.num_running, self.structured.draft_prefix)
            iteration.num_prompt_tokens = sched_out.num_prefill_tokens
            iteration.num_tokens_in_step = sched_out.total_num_tokens
            outputs = step_outputs(self.scheduler.sequences, result, progressed, iteration)
            for seq in finished:
                self.structured.free([seq.seq_id])
                self._forget_if_done(seq.request_id)
        elif sched_out.finished_seq_ids:
            self.executor.execute(sched_out)  # only drops the runner's state for them
        # Also when nobody listens: it resets the prefix-cache counts.
        scheduler_stats = self.scheduler.make_stats()
        iteration.prefix_cache_queries = scheduler_stats.prefix_cache_queries
        iteration.prefix_cache_hits = scheduler_stats.prefix_cache_hits
        return CoreOutputs(failed + outputs, scheduler_stats, iteration)

    def _advance_grammars(self, progressed: list[Sequence]) -> list[Sequence]:
        """Each constrained sequence's matcher takes its new tokens; a completed grammar finishes the sequence, and
        tokens a kept draft gave after the one that completed it are dropped (the plain step would have stopped)."""
        done = []
        for seq in progressed:
            new = seq.output_token_ids[len(seq.output_token_ids) - seq.num_new_output_tokens :]
            for i, token_id in enumerate(new):
                if not self.structured.accept(seq.seq_id, token_id):
                    continue
                extra = len(new) - i - 1
                if extra:
                    del seq.output_token_ids[-extra:]
                    del seq.all_token_ids[-extra:]
                    seq.num_new_output_tokens -= extra
                if not seq.is_finished:
                    self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
                    done.append(seq)
                break
        return done

    def check_health(self) -> None:
        """Raises when the executor's workers can no longer run a step (a rank died while the engine was idle)."""
        self.executor.check_health()

    def shutdown(self) -> None:
        """Stops the executor's worker processes (nothing to do in-process); the core cannot step after it."""
        self.executor.shutdown()
        self.structured.shutdown()

    def check_invariants(self) -> None:
        self.scheduler.check_invariants()
        assert set(self._request_seqs) == {s.request_id for s in self.scheduler.sequences.values()}
        assert self.structured.live_seq_ids <= set(self.scheduler.sequences), (
            "grammar state outlived its sequence"
        )
        assert self.structured.num_pending == len(self._waiting_for_grammar)
