"""GPU capacity planner: how many GPUs of a kind one replica needs, and how much KV cache room that leaves.

Memory model, per GPU of a tensor-parallel group of size t (docs/preflight.md shows it reproducing the seed's FAQ):
  budget      = GPU memory x gpu_memory_utilization (the engine's own cap, 0.9 by default)
  weights     = all weights / t
  runtime     = 1 GiB (CUDA context, cuBLAS workspaces, CUDA graphs, allocator slack) + 0.5 GiB NCCL if t > 1
  activations = max_num_batched_tokens x (4 hidden + 3 intermediate / t) x activation bytes
                + max_num_seqs x vocab x 4 bytes (float32 logits)
  KV room     = budget - weights - runtime - activations
and the seed's "~20 % VRAM headroom" as a sizing rule: the group's total memory must be >= 1.2 x the weights.
A size fits when both hold and the KV room holds `concurrency` sequences of max_model_len tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import get_args

from pagedserve import kv_memory
from pagedserve.config import DEFAULT_MAX_NUM_BATCHED_TOKENS, CacheConfig, KVCacheDType, SchedulerConfig
from pagedserve.kube.gpus import GpuType
from pagedserve.kube.model_spec import ModelSpec

GIB = 1024**3
SEED_HEADROOM = 0.20
RUNTIME_OVERHEAD_BYTES = 1 * GIB
NCCL_OVERHEAD_BYTES = GIB // 2
QUANT_GROUP_SIZE = 128
QUANTIZATIONS = ("none", "awq", "gptq", "fp8", "int8")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Bytes per linear weight: 4-bit packed + one fp16 scale and a packed 4-bit zero point per group of 128.
_LINEAR_BYTES = {
    "awq": 0.5 + 2.5 / QUANT_GROUP_SIZE,
    "gptq": 0.5 + 2.5 / QUANT_GROUP_SIZE,
    "fp8": 1.0,
    "int8": 1.0,
}

# Bytes a KV cache element takes for each --kv-cache-dtype but auto (the model's dtype).
KV_ELEMENT_BYTES = {"bfloat16": 2, "fp8": 1, "fp8_e4m3": 1}


@dataclass(frozen=True)
class PlanRequest:
    dtype: str = "auto"
    quantization: str | None = None
    """None: the checkpoint's own (none when it has no quantization_config)."""
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None
    concurrency: int = 1
    gpu_memory_utilization: float = CacheConfig.gpu_memory_utilization
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    max_num_seqs: int = SchedulerConfig.max_num_seqs
    max_gpus_per_node: int = 8
    block_size: int = CacheConfig.block_size

    def validate(self) -> None:
        if self.dtype not in ("auto", *DTYPE_BYTES):
            raise ValueError(f"dtype must be auto, {', '.join(DTYPE_BYTES)}; got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {self.quantization!r}"
            )
        if self.kv_cache_dtype not in get_args(KVCacheDType):
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(get_args(KVCacheDType))}; got {self.kv_cache_dtype!r}"
            )
        for name in (
            "concurrency",
            "max_num_batched_tokens",
            "max_num_seqs",
            "max_gpus_per_node",
            "block_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1; got {self.max_model_len}")
        if not 0.1 <= self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in [0.1, 1]; got {self.gpu_memory_utilization}")


@dataclass(frozen=True)
class GroupFit:
    """Memory arithmetic of one tensor-parallel size on one GPU type (bytes are per GPU unless named total)."""

    tp: int
    budget: int
    weights: int
    runtime: int
    activations: int
    kv_room: int
    kv_bytes_per_token: int
    kv_tokens: int
    max_concurrency: int
    headroom_ok: bool
    fits: bool
    reason: str


@dataclass
class Plan:
    model: ModelSpec
    gpu: GpuType
    dtype: str
    quantization: str
    kv_cache_dtype: str
    max_model_len: int
    concurrency: int
    request: PlanRequest
    weight_bytes: int
    kv_bytes_per_token: int
    """Whole model, all layers and KV heads (before tensor-parallel sharding)."""
    valid_tp_sizes: list[int]
    candidates: list[GroupFit]
    chosen: GroupFit | None
    notes: list[str] = field(default_factory=list)

    @property
    def kv_bytes_requested(self) -> int:
        return self.kv_bytes_per_token * self.seq_tokens * self.concurrency

    @property
    def seq_tokens(self) -> int:
        """Tokens of the pool one max-length sequence occupies, rounded up to whole KV blocks (with window layers,
        those of its groups: a window group holds its window and a step's chunk)."""
        return sequence_pool_tokens(self.model, self.max_model_len, self.request)


def kv_groups(model: ModelSpec) -> list[kv_memory.KVCacheGroup] | None:
    """The engine's KV cache groups for a model with window layers (kv_memory.kv_cache_groups); None without."""
    if not any(w is not None for w in model.layer_windows):
        return None
    return kv_memory.kv_cache_groups(list(model.layer_windows))


def kv_layers(model: ModelSpec) -> int:
    """The layers a token of the pool holds: every layer, or a hybrid model's group slots."""
    groups = kv_groups(model)
    return model.num_layers if groups is None else kv_memory.group_slots(groups)


def sequence_pool_tokens(model: ModelSpec, max_model_len: int, request: PlanRequest) -> int:
    groups = kv_groups(model)
    if groups is None:
        return kv_memory.sequence_tokens(max_model_len, request.block_size)
    windows = [g.sliding_window for g in groups]
    blocks = kv_memory.sequence_blocks(
        max_model_len, request.block_size, windows, request.max_num_batched_tokens
    )
    return blocks * request.block_size


def kv_bytes_per_token(model: ModelSpec, kv_dtype_bytes: int) -> int:
    """2 (K and V) x layers x KV heads x head dim x bytes per element (kv_memory, as the engine counts); the
    layers a token of the pool holds (a hybrid model's group slots)."""
    return kv_memory.kv_bytes_per_token(kv_layers(model), model.num_kv_heads, model.head_dim, kv_dtype_bytes)


def weight_bytes(model: ModelSpec, quantization: str, dtype_bytes: int) -> int:
    """Weights in memory. Quantized methods quantize the linear layers; embeddings and norms stay 16-bit."""
    if quantization == "none":
        return model.param_count * dtype_bytes
    unquantized = model.param_count - model.linear_params
    return int(model.linear_params * _LINEAR_BYTES[quantization]) + unquantized * 2


def valid_tp_sizes(model: ModelSpec, quantization: str, limit: int) -> list[int]:
    """Tensor-parallel sizes up to `limit` the sharding allows.

    t must divide the attention heads and the MLP width; KV heads are split when t divides them and
    replicated when they divide t (vLLM's rule); 4-bit group-quantized weights also need whole groups per shard.
    """
    sizes = []
    for t in range(1, limit + 1):
        if model.num_attention_heads % t or model.intermediate_size % t:
            continue
        if model.num_kv_heads % t and t % model.num_kv_heads:
            continue
        if quantization in ("awq", "gptq") and (model.intermediate_size // t) % QUANT_GROUP_SIZE:
            continue
        sizes.append(t)
    return sizes


def _resolve_dtype(
    model: ModelSpec, request: PlanRequest, quantization: str, gpu: GpuType, notes: list[str]
) -> str:
    if quantization in ("awq", "gptq"):
        return "float16"  # the 4-bit kernels compute in float16
    dtype = request.dtype
    if dtype == "auto":
        dtype = model.torch_dtype if model.torch_dtype in ("bfloat16", "float16") else "bfloat16"
        if dtype == "bfloat16" and not gpu.bf16:
            notes.append(f"{gpu.name} has no bfloat16 support: planning for float16")
            dtype = "float16"
    elif dtype == "bfloat16" and not gpu.bf16:
        raise ValueError(f"dtype bfloat16 is not supported on {gpu.name}; use --dtype float16")
    return dtype


def _fit(
    model: ModelSpec, plan_inputs: dict[str, int], request: PlanRequest, gpu: GpuType, t: int
) -> GroupFit:
    weights_total, act_bytes, kv_elem_bytes, seq_tokens = (
        plan_inputs["weights"],
        plan_inputs["act_bytes"],
        plan_inputs["kv_elem_bytes"],
        plan_inputs["seq_tokens"],
    )
    budget = int(gpu.memory_bytes * request.gpu_memory_utilization)
    weights = math.ceil(weights_total / t)
    runtime = RUNTIME_OVERHEAD_BYTES + (NCCL_OVERHEAD_BYTES if t > 1 else 0)
    # A token runs its top-k experts (and a shared one): their widths, not all experts', hold activations.
    mlp_width = model.intermediate_size * model.experts_per_token + model.shared_expert_intermediate_size
    per_token_activation = 4 * model.hidden_size + 3 * mlp_width // t
    activations = request.max_num_batched_tokens * per_token_activation * act_bytes
    activations += request.max_num_seqs * model.vocab_size * 4
    kv_heads_per_gpu = max(1, model.num_kv_heads // t)
    kv_per_token = kv_memory.kv_bytes_per_token(
        kv_layers(model), kv_heads_per_gpu, model.head_dim, kv_elem_bytes
    )
    kv_room = budget - weights - runtime - activations
    kv_tokens = max(0, kv_room) // kv_per_token // request.block_size * request.block_size
    # With window groups the engine keeps block 0 as the null block.
    null_tokens = request.block_size if kv_groups(model) else 0
    # seq_tokens: kv_memory's arithmetic, as the engine logs it
    max_concurrency = max(0, kv_tokens - null_tokens) // seq_tokens
    headroom_ok = t * gpu.memory_bytes >= (1 + SEED_HEADROOM) * weights_total
    if not headroom_ok:
        reason = f"{t} x {gpu.name} is under the weights + {SEED_HEADROOM:.0%} headroom"
    elif kv_room <= 0:
        reason = "weights, runtime and activations exceed the memory budget"
    elif max_concurrency < request.concurrency:
        reason = f"KV room holds {max_concurrency} max-length sequences, {request.concurrency} asked"
    else:
        reason = "fits"
    fits = reason == "fits"
    return GroupFit(
        tp=t,
        budget=budget,
        weights=weights,
        runtime=runtime,
        activations=activations,
        kv_room=kv_room,
        kv_bytes_per_token=kv_per_token,
        kv_tokens=kv_tokens,
        max_concurrency=max_concurrency,
        headroom_ok=headroom_ok,
        fits=fits,
        reason=reason,
    )


def plan_capacity(model: ModelSpec, gpu: GpuType, request: PlanRequest) -> Plan:
    """Smallest valid tensor-parallel size of `gpu` that serves `model` as asked, with the arithmetic behind it."""
    request.validate()
    notes: list[str] = []
    quantization = request.quantization or model.checkpoint_quantization or "none"
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"checkpoint quantization {quantization!r} is not one the planner knows ({QUANTIZATIONS})"
        )
    if model.checkpoint_quantization and quantization != model.checkpoint_quantization:
        notes.append(
            f"checkpoint is {model.checkpoint_quantization}-quantized; planning for {quantization} anyway"
        )
    if quantization == "fp8" and not gpu.fp8:
        if gpu.family in ("turing", "volta"):
            raise ValueError(f"fp8 weights need an Ampere or newer GPU; {gpu.name} is {gpu.family}")
        notes.append(
            f"{gpu.name} has no FP8 tensor cores: FP8 weights run as weight-only (slower than on Hopper/Ada)"
        )
    if quantization != "none":
        notes.append(
            "pagedserve's own engine serves unquantized weights, GGUF files, compressed-tensors (W4A16, W8A16, "
            "W8A8, FP8), AWQ and GPTQ checkpoints today, on CPUs; this quantized sizing is for vLLM images"
        )
    dtype = _resolve_dtype(model, request, quantization, gpu, notes)
    dtype_bytes = DTYPE_BYTES[dtype]
    kv_elem_bytes = KV_ELEMENT_BYTES.get(request.kv_cache_dtype, dtype_bytes)
    max_model_len = request.max_model_len or model.max_position_embeddings
    if max_model_len > model.max_position_embeddings:
        notes.append(
            f"max_model_len {max_model_len} exceeds the model's {model.max_position_embeddings} positions"
        )
    weights = weight_bytes(model, quantization, dtype_bytes)
    sizes = valid_tp_sizes(model, quantization, request.max_gpus_per_node)
    lost = sorted(set(valid_tp_sizes(model, "none", request.max_gpus_per_node)) - set(sizes))
    if lost:
        notes.append(
            f"tensor-parallel {', '.join(map(str, lost))} ruled out for {quantization}: intermediate_size / t is not "
            f"a multiple of the {QUANT_GROUP_SIZE}-weight group (quantized releases often pad it: plan their config.json)"
        )
    seq_tokens = sequence_pool_tokens(model, max_model_len, request)
    groups = kv_groups(model)
    if groups is not None:
        windows = sorted({w for w in model.layer_windows if w is not None})
        local = sum(w is not None for w in model.layer_windows)
        notes.append(
            f"{local} of {model.num_layers} layers attend to a sliding window ({', '.join(map(str, windows))} "
            f"tokens): as in vLLM, their blocks out of the window go back to the pool, in {len(groups)} KV cache "
            f"groups of {kv_memory.group_slots(groups)} layers; a max-length sequence holds {seq_tokens:,} tokens "
            f"of {kv_memory.group_slots(groups)}-layer blocks, against "
            f"{kv_memory.sequence_tokens(max_model_len, request.block_size):,} tokens of {model.num_layers}-layer "
            "blocks with --disable-hybrid-kv-cache-manager"
        )
    inputs = {
        "weights": weights,
        "act_bytes": dtype_bytes,
        "kv_elem_bytes": kv_elem_bytes,
        "seq_tokens": seq_tokens,
    }
    candidates = [_fit(model, inputs, request, gpu, t) for t in sizes]
    chosen = next((c for c in candidates if c.fits), None)
    if chosen is None:
        notes.append(
            f"no valid tensor-parallel size up to {request.max_gpus_per_node} GPUs fits: use a larger GPU, "
            "quantization, a shorter --max-model-len or lower --concurrency"
        )
    return Plan(
        model=model,
        gpu=gpu,
        dtype=dtype,
        quantization=quantization,
        kv_cache_dtype=request.kv_cache_dtype,
        max_model_len=max_model_len,
        concurrency=request.concurrency,
        request=request,
        weight_bytes=weights,
        kv_bytes_per_token=kv_bytes_per_token(model, kv_elem_bytes),
        valid_tp_sizes=sizes,
        candidates=candidates,
        chosen=chosen,
        notes=notes,
    )
