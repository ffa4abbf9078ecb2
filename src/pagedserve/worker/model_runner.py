"""Builds the model and its KV cache on a device and runs one scheduler step: inputs -> logits -> tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from pagedserve import envs
from pagedserve.attention.backend import default_attention_backend, get_attention_backend
from pagedserve.config import CacheConfig, LoRAConfig
from pagedserve.core.scheduler_output import NewSequence, ScheduledSequence, SchedulerOutput
from pagedserve.cpu_info import cpu_info
from pagedserve.distributed import parallel_state
from pagedserve.distributed.partition import head_shard, max_kv_heads_per_rank
from pagedserve.kv_memory import group_slots, kv_cache_groups
from pagedserve.layers.embedding import interleave_gguf_weights
from pagedserve.layers.linear import quantize_linears_fp8
from pagedserve.layers.moe import prepare_moe_kernels
from pagedserve.layers.pooler import PoolingType
from pagedserve.model_config import ModelConfig
from pagedserve.models.llama import attention_window, config_for_serving, without_sliding_window
from pagedserve.models.registry import resolve_model_class
from pagedserve.ops import build as cpu_kernels
from pagedserve.sample.metadata import make_generator
from pagedserve.sample.sampler import Sampler
from pagedserve.worker.decode_graphs import make_decode_graphs
from pagedserve.worker.device import configure_cpu_threads
from pagedserve.worker.dtypes import cast_matrix_weights, use_bf16_gguf_panels
from pagedserve.worker.dummy_weights import init_dummy_weights
from pagedserve.worker.gpu_memory import gpu_kv_budget
from pagedserve.worker.huge_pages import huge_pages_mode, move_weights_to_huge_pages
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import (
    allocate_kv_caches,
    kv_bytes_per_block,
    kv_cache_budget_bytes,
    layer_kv_caches,
    resolve_kv_cache_dtype,
)
from pagedserve.worker.lora_manager import LoRAManager
from pagedserve.worker.pooling import pooled_vectors, prompt_spans, token_types
from pagedserve.worker.prompt_logprobs import prompt_logprobs, wants_prompt_logprobs
from pagedserve.worker.runner_output import ModelRunnerOutput
from pagedserve.worker.sampling_step import sample_sequences

logger = logging.getLogger("pagedserve")


@dataclass
class RunnerSequence:
    """The runner's copy of one sequence, from its first step until the scheduler reports it finished."""

    new: NewSequence
    token_ids: list[int]
    """Every token run so far, by position (prompt first); at a sampling step, the whole sequence and the draft
    being verified (rejected draft tokens are overwritten by the next step, which starts at their position)."""
    generator: torch.Generator | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.new.prompt_token_ids)


class ModelRunner:
    def __init__(
        self,
        hf_config: Any,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_model_len: int,
        weights: Any | None,
        dtype: torch.dtype,
        device: torch.device,
        attention_backend: str | None = None,
        weight_dtype: torch.dtype | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 4096,
        quantize_fp8: bool = False,
        lora_config: LoRAConfig | None = None,
        pooling_type: PoolingType = "LAST",
    ) -> None:
        """quantize_fp8: quantize the float linear layers to float8 once loaded (--quantization fp8 on a float
        checkpoint, layers/linear.py's quantize_fp8). lora_config: serve LoRA adapters (--enable-lora).
        pooling_type: how an embedding request's rows become its vector (--runner pooling)."""
        self.pooling_type = pooling_type
        self.hf_config = hf_config
        self.device = device
        self.dtype = dtype
        self.weight_dtype = weight_dtype or dtype
        self.block_size = cache_config.block_size
        self.max_model_len = max_model_len
        self.vocab_size = hf_config.vocab_size
        self.cpu_kernels = ""
        if device.type == "cpu":
            self.cpu_threads = configure_cpu_threads(model_config.cpu_threads)
            self.cpu_kernels = cpu_kernels.active_level() or ""
            logger.info(
                "CPU: %s; C kernels in use: %s; %d threads", cpu_info().describe(),
                self.cpu_kernels or "none (PyTorch paths)", self.cpu_threads,
            )  # fmt: skip
        model_class = resolve_model_class(hf_config)
        if lora_config is not None and lora_config.enable_lora and getattr(model_class, "is_moe", False):
            raise ValueError(
                f"--enable-lora: LoRA adapters on mixture-of-experts models ({model_class.__name__}) are not "
                "supported"
            )
        if (
            lora_config is not None
            and lora_config.enable_lora
            and not getattr(model_class, "supports_lora", True)
        ):
            raise ValueError(f"--enable-lora: LoRA adapters on {model_class.__name__} are not supported")
        # The rotary tables cover the positions a step can reach (a sequence's, or the longest step of the GPU
        # memory profile), not the model's whole context: Gemma 3 27B's two tables at 131 072 positions are 268 MB
        # (float32 cos and sin of 128 dims) against 17 MB at 8192. Past max_position_embeddings only with
        # VLLM_ALLOW_LONG_MAX_MODEL_LEN (engine/model_rules.py).
        reach = max(max_model_len, max_num_batched_tokens)
        # Encoders' positions are learned: their table is the checkpoint's, whatever a step reaches.
        is_encoder = getattr(model_class, "is_encoder", False)
        self.is_classifier = bool(getattr(model_class, "is_classifier", False))
        model_hf_config = hf_config if is_encoder else config_for_serving(hf_config, reach, max_model_len)
        # With --disable-sliding-window, max_model_len is capped at the window (engine/model_rules.py).
        if model_config.disable_sliding_window:
            model_hf_config = without_sliding_window(model_hf_config)
        self.attention_backend = (
            attention_backend or envs.attention_backend() or default_attention_backend(device)
        )
        backend = get_attention_backend(self.attention_backend)
        torch.manual_seed(model_config.seed)
        with torch.device(device):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                self.model = model_class(model_hf_config, backend)
            finally:
                torch.set_default_dtype(previous)
        # Matrices take their storage dtype before loading (no float32 copy of the weights), except when they are
        # quantized to float8 at load: from the checkpoint's values, not rounded to bfloat16 first.
        cast_first = self.weight_dtype != dtype and not quantize_fp8
        if cast_first:
            cast_matrix_weights(self.model, self.weight_dtype)
        if weights is None:
            init_dummy_weights(self.model, self.device, model_config.seed)
        else:
            loaded = self.model.load_weights(weights)
            missing = {n for n, _ in self.model.named_parameters()} - loaded
            if missing:
                raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        if quantize_fp8:
            count = quantize_linears_fp8(self.model)
            logger.info(
                "quantization fp8: %d linear layers quantized to float8 e4m3 at load (one scale a layer, "
                "activations quantized per tensor at run time)", count,
            )  # fmt: skip
            if self.weight_dtype != dtype:  # the embedding and LM head, left float
                cast_matrix_weights(self.model, self.weight_dtype)
        # After every loader (LoRA, TP slices, parts of mixed types) has seen the file's row order.
        regrouped = interleave_gguf_weights(self.model)
        if regrouped:
            logger.debug("GGUF: %d matrices' rows interleaved for the CPU GEMV", regrouped)
        if device.type == "cpu" and self.weight_dtype == torch.bfloat16:
            marked = use_bf16_gguf_panels(self.model)
            if marked:
                logger.info("GGUF: %d matrices multiply prefills in bfloat16 panels (float32 sums)", marked)
        # Before anything records a weight's address (the experts' tables below, decode graphs, LoRA).
        self.huge_page_bytes = move_weights_to_huge_pages(self.model) if device.type == "cpu" else 0
        if self.huge_page_bytes:
            logger.info(
                "CPU weights: %.1f MB in memory asked for in 2 MB pages (transparent huge pages: %s)",
                self.huge_page_bytes / 1e6, huge_pages_mode(),
            )  # fmt: skip
        moe_blocks, moe_kernels = prepare_moe_kernels(self.model)  # the experts' addresses: after regrouping
        if moe_blocks:
            logger.info(
                "mixture of experts: %d of %d blocks decode through the C kernel (experts in GGUF blocks)",
                moe_kernels, moe_blocks,
            )  # fmt: skip
        self.model.eval()
        # Before the KV budget: on a GPU it is what memory is left once the adapters' slots are allocated.
        self.lora = None
        if lora_config is not None and lora_config.enable_lora:
            self.lora = LoRAManager(
                self.model, hf_config, lora_config.max_loras, lora_config.cache_size, lora_config.max_lora_rank,
                max_num_batched_tokens, dtype, device,
            )  # fmt: skip
        # Scales of int8 / float8 weights and the blocks of merged layers kept per part count as weights.
        stored = [b for name, b in self.model.named_buffers() if ".weight_" in name]
        self.weight_bytes = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *stored])
        self.kv_cache_dtype = resolve_kv_cache_dtype(cache_config.kv_cache_dtype, dtype, self.weight_dtype)
        tp = parallel_state.get_tp()
        num_heads = hf_config.num_attention_heads
        num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
        rank_kv_heads = head_shard(num_heads, num_kv_heads, tp.rank, tp.size).num_kv_heads
        # An encoder reads no KV cache (attention/encoder.py): its blocks only count the tokens in flight, so no
        # memory is profiled or allocated for them.
        self.is_encoder = is_encoder
        if device.type == "cuda" and cache_config.kv_cache_memory_bytes is None and not self.is_encoder:
            budget = gpu_kv_budget(
                self.model, hf_config, cache_config.gpu_memory_utilization, max_num_batched_tokens, max_num_seqs,
                self.block_size, self.kv_cache_dtype, rank_kv_heads, device,
            )  # fmt: skip
        else:
            budget = kv_cache_budget_bytes(cache_config, device, allocated=not self.is_encoder)
        # Layers of one attention kind share block tables (kv_memory.py); an encoder has no cache.
        num_layers = hf_config.num_hidden_layers
        windows = [None if is_encoder else attention_window(model_hf_config, i) for i in range(num_layers)]
        groups = kv_cache_groups(windows, hybrid=not cache_config.disable_hybrid_kv_cache_manager)
        self.kv_group_windows = [group.sliding_window for group in groups]
        slots = group_slots(groups)
        # Every rank sizes its blocks for the most KV heads any rank holds, so all hold the same number of blocks.
        room = max_kv_heads_per_rank(num_heads, num_kv_heads, tp.size)
        per_block = kv_bytes_per_block(hf_config, self.block_size, self.kv_cache_dtype, room, slots)
        self.num_blocks = budget // per_block
        # A model with window groups gives up block 0 as the null block (core/block_pool.py).
        fewest = 2 if any(self.kv_group_windows) else 1
        if self.num_blocks < fewest:
            raise ValueError(
                f"KV cache budget of {budget} bytes holds {self.num_blocks} blocks of {per_block} bytes, fewer "
                f"than {fewest}: raise kv_cache_memory_bytes"
            )
        self.kv_cache_bytes = 0 if self.is_encoder else self.num_blocks * per_block
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.layer_groups: list[int] | None = None  # each layer's group, where there are several
        if not self.is_encoder:
            slot_caches = allocate_kv_caches(
                hf_config, self.num_blocks, self.block_size, self.kv_cache_dtype, device, rank_kv_heads, slots
            )
            self.kv_caches, self.layer_groups = layer_kv_caches(slot_caches, groups)
        self.sampler = Sampler()
        self.sequences: dict[str, RunnerSequence] = {}
        self.decode_graphs = None
        # Decode graphs end in the LM head: pooling-only models (encoders, classifiers) have none to replay.
        if not model_config.enforce_eager and not self.is_encoder and not self.is_classifier:
            self.decode_graphs = make_decode_graphs(
                self.model, self.kv_caches, self.attention_backend, self.device, self.dtype,
                hf_config.hidden_size, self.block_size, max_num_seqs, max_model_len, tp.size, self.layer_groups,
            )  # fmt: skip

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        for seq_id in scheduler_output.finished_seq_ids:
            self.sequences.pop(seq_id, None)
        for new in scheduler_output.new_sequences:
            seed = new.sampling_params.seed
            # Siblings (n > 1) of one seeded request draw different but reproducible samples.
            generator = None if seed is None else make_generator(seed + new.sample_index, self.device)
            self.sequences[new.seq_id] = RunnerSequence(new, list(new.prompt_token_ids), generator)
        for seq in scheduler_output.sequences:
            state = self.sequences.get(seq.seq_id)
            if state is None:
                raise ValueError(f"step runs sequence {seq.seq_id!r} that was never sent as new")
            if seq.resumed_token_ids is not None:
                state.token_ids = list(seq.resumed_token_ids)
            if seq.start_position > len(state.token_ids):
                raise ValueError(
                    f"sequence {seq.seq_id!r} resumes at position {seq.start_position} but the runner has "
                    f"{len(state.token_ids)} of its tokens"
                )
            # Positions before start_position never change; after a preemption they are run again.
            state.token_ids[seq.start_position :] = seq.token_ids

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(scheduler_output)
        result = ModelRunnerOutput()
        if scheduler_output.is_empty:
            return result
        scheduled = scheduler_output.sequences
        if self.lora is not None:  # each adapter's rows side by side: its delta is one slice (layers/lora.py)
            scheduled = sorted(scheduled, key=self._lora_id)
        step = prepare_inputs(scheduled, self.block_size, self.device, self.layer_groups)
        states = [self.sequences[s.seq_id] for s in step.sequences]
        with_lora = False
        if self.lora is not None:  # every step: a replayed graph reads the rows' slots
            rows = [
                (seq.seq_id, state.new.lora, last - seq.num_new_tokens + 1, seq.num_new_tokens)
                for seq, state, last in zip(step.sequences, states, step.last_token_rows)
            ]
            with_lora = self.lora.set_step(rows, len(step.input_ids), result.failed_seq_ids)
        try:
            step_logits = None  # every row's logits, from a replayed decode graph
            any_prompt_logprobs = any(map(wants_prompt_logprobs, step.sequences, states))
            pooling = [
                i for i, s in enumerate(step.sequences) if s.samples and states[i].new.sampling_params.pooling
            ]
            # A CUDA graph (or a CPU one without the LoRA kernel) replays the layers without their adapters.
            graphs_apply = not with_lora or self.lora.recordable  # type: ignore[union-attr]
            # Embeddings need the hidden states, which a replayed decode graph does not keep.
            if self.decode_graphs is not None and not any_prompt_logprobs and graphs_apply and not pooling:
                step_logits = self.decode_graphs.logits(step.input_ids, step.positions, step.metadata)
            hidden = None
            if step_logits is None:
                extra = {}
                if self.is_classifier and self.is_encoder:  # BERT's second text of a pair is token type 1
                    types = [state.new.sampling_params.pooling for state in states]
                    extra["token_type_ids"] = token_types(step, types, self.device)
                hidden = self.model(step.input_ids, step.positions, self.kv_caches, step.metadata, **extra)
        finally:
            if with_lora:
                self.lora.batch.spans = []  # type: ignore[union-attr]
        # Embedding requests end after their prompt (max_tokens 1) with a placeholder token: no LM head runs for them.
        for i in pooling:
            result.sampled_token_ids[step.sequences[i].seq_id] = [0]
        pooled = set(pooling)
        sampling = [(i, s) for i, s in enumerate(step.sequences) if s.samples and i not in pooled]
        if sampling:
            sample_sequences(
                self.model, self.sampler, step, states, sampling, hidden, step_logits, self.vocab_size, self.device,
                scheduler_output.grammar_bitmask, result,
            )  # fmt: skip
        if hidden is not None and any_prompt_logprobs:
            result.prompt_logprobs = prompt_logprobs(self.model, step, states, hidden)
        if pooling:
            params = [states[i].new.sampling_params.pooling for i in pooling]
            spans = prompt_spans(step, pooling)
            vectors = pooled_vectors(self.model, hidden, spans, params, self.pooling_type)
            for i, vector in zip(pooling, vectors):
                result.embeddings[step.sequences[i].seq_id] = vector
        for seq_id in result.failed_seq_ids:
            for outputs in (
                result.sampled_token_ids,
                result.logprobs,
                result.prompt_logprobs,
                result.embeddings,
            ):
                outputs.pop(seq_id, None)
        return result

    def _lora_id(self, seq: ScheduledSequence) -> int:
        lora = self.sequences[seq.seq_id].new.lora
        return 0 if lora is None else lora.lora_int_id
