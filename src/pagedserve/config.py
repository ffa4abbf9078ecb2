"""Typed configuration. Each field's docstring is its CLI help (see `cli/args.py`) and the chart's values doc.

Flags are the field names with dashes, spelled as vLLM's (`--max-model-len`, `--block-size`, ...).
Runtime-derived values (number of KV blocks, EOS ids) do not live here: see `EngineInfo` in `outputs.py`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pagedserve.json_configs import SpeculativeConfig, StructuredOutputsConfig

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
LoadFormat = Literal["auto", "safetensors", "gguf", "dummy"]
DeviceName = Literal["auto", "cpu", "cuda"]
KVCacheDType = Literal["auto", "fp8", "fp8_e4m3"]


# A step's token budget when --max-num-batched-tokens is not given (vLLM's default for chunked prefill).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 4096

# --quantization values the engine runs (ModelConfig.quantization).
QUANTIZATION_CHOICES = ("gguf", "compressed-tensors", "awq", "gptq", "fp8", "none")


@dataclass
class ModelConfig:
    model: str | None = None
    """Hugging Face model folder, GGUF file, or a Hub id (org/name) already in the local Hugging Face cache (see
    --download-dir; nothing is downloaded). Empty: the bundled SmolLM2-135M-Instruct GGUF."""

    tokenizer: str | None = None
    """Tokenizer folder, .gguf file or cached Hub id; defaults to the model's own."""

    revision: str | None = None
    """For a Hub id (org/name) as the model: the branch, tag or commit of the local Hugging Face cache to serve
    (vLLM's flag; default main). Nothing is downloaded: the cache must already hold it."""

    tokenizer_revision: str | None = None
    """The same for a Hub id given as --tokenizer; default: --revision."""

    download_dir: str | None = None
    """The Hugging Face cache folder Hub ids are looked up in (vLLM's flag, where vLLM would download to); default
    HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""

    dtype: DTypeName = "auto"
    """Weight and activation dtype. auto: float32 for float32 checkpoints and on CPUs without bfloat16 instructions (AVX512_BF16, AMX); otherwise bfloat16."""

    max_model_len: int | None = None
    """Longest sequence (prompt + output) in tokens. Defaults to the model's max_position_embeddings."""

    load_format: LoadFormat = "auto"
    """Weight format: auto (by file type), safetensors, gguf, or dummy (random weights from the config)."""

    quantization: str | None = None
    """Weight quantization, as vLLM's flag. "gguf": a .gguf file's Q4_0, Q4_1, Q8_0, Q4_K and Q6_K matrices stay in
    their blocks (other types are dequantized at load; other files are refused); "compressed-tensors": a checkpoint
    with a compressed-tensors quantization_config (W4A16, W8A16, W8A8, FP8) keeps its quantized layers; "awq" /
    "gptq": an AutoAWQ (4-bit GEMM) or GPTQ (4-bit, symmetric 8-bit) checkpoint's layers are repacked into GGUF
    blocks and kept; "fp8": a checkpoint whose quantization_config says fp8 (per-tensor float8 e4m3 weights,
    dynamic activations) keeps its layers, and a float checkpoint's linear layers (not the LM head) are quantized
    to float8 e4m3 at load, one scale a layer, activations quantized per tensor at run time (vLLM's online FP8);
    "none": every quantized tensor is dequantized at load. Unset: the checkpoint's quantization_config, or "gguf" for a
    .gguf file where this CPU's kernels multiply blocks at every batch size (AVX2), else "none". A value that
    contradicts the checkpoint, and other schemes, are refused by name."""

    max_logprobs: int = 20
    """Most logprobs a request may ask for per token, sampled or prompt (vLLM's flag); -1: the whole vocabulary."""

    seed: int = 0
    """Seed for random weights (dummy) and for sampling of requests that give no seed."""

    generation_config: str = "auto"
    """Where default sampling parameters come from (vLLM's flag): auto (the model's generation_config.json, or a
    GGUF's general.sampling.*), vllm (none: vLLM's defaults), or a folder holding a generation_config.json. They
    apply to fields a request leaves unset; max_new_tokens caps max_tokens."""

    override_generation_config: dict[str, float] = field(default_factory=dict)
    """Default sampling values applied over --generation-config's (vLLM's flag, a JSON object): temperature, top_p,
    top_k, min_p, repetition_penalty, max_new_tokens (a server-wide cap on max_tokens); with --generation-config
    vllm, only these. Other keys are refused by name."""

    hf_overrides: dict[str, Any] = field(default_factory=dict)
    """Values set over the checkpoint's config.json before it is read (vLLM's flag, a JSON object), e.g.
    '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}' to serve
    Qwen2.5 / Qwen3 past 32k. A dict merges into the dict or sub-config it names (rope_theta stays); other values
    replace (models/hf_overrides.py)."""

    chat_template: str | None = None
    """Jinja chat template file or inline string overriding the tokenizer's."""

    runner: Literal["auto", "generate", "pooling"] = "auto"
    """What the model runs for (vLLM's flag): generate (text; auto's choice for causal models) or pooling
    (auto's choice for encoders: BERT, XLM-RoBERTa): embeddings (/v1/embeddings, LLM.embed), the final hidden states
    pooled as the folder's sentence-transformers config says (last token, CLS or mean; default: last token for
    causal models, CLS for encoders), L2-normalized; and /score, /rerank (a cross-encoder's head, or the cosine
    similarity of two embeddings), /classify (a sequence classifier's label probabilities)."""

    task: Literal["auto", "generate", "embed", "embedding"] = "auto"
    """vLLM's older spelling of --runner (deprecated there): generate, or embed / embedding for pooling."""

    tokenizer_mode: Literal["auto", "hf"] = "auto"
    """The tokenizer implementation (vLLM's flag): auto and hf both load the folder's Hugging Face tokenizer
    (fast); slow and mistral tokenizers are not offered."""

    trust_remote_code: bool = False
    """Accepted for vLLM's manifests and changes nothing: pagedserve runs no code from model folders, and a
    checkpoint that needs its own code (config.json's auto_map for an architecture we do not implement) is refused
    by name either way; for the architectures we run, vLLM's flag changes nothing either."""

    disable_sliding_window: bool = False
    """Run sliding-window layers with full attention and cap max_model_len at the smallest window (vLLM's flag):
    within the window both attend to the same keys. Also serves Qwen checkpoints with use_sliding_window on, which
    are refused without it."""

    enforce_eager: bool = False
    """Run every step eagerly, as vLLM's flag: no decode graphs (CUDA graphs per batch-size bucket on a GPU,
    worker/cuda_graph.py; on the CPU, decode steps of 1-8 sequences replayed as recorded C kernel calls,
    worker/cpu_graph.py)."""

    device: DeviceName = "auto"
    """Device for the model runner: auto picks cuda when torch sees one, else cpu. The device picks the attention
    backend (Triton kernels on cuda, C kernels on cpu; PAGEDSERVE_ATTENTION_BACKEND overrides)."""

    cpu_threads: int | None = None
    """CPU threads for the model's math (torch/OpenMP). Default: PAGEDSERVE_CPU_THREADS, else the CPUs the process
    may use: its affinity mask capped by its cgroup CPU quota (Kubernetes' limits.cpu), rounded down."""

    def validate(self) -> None:
        """ValueError naming the field (the model-dependent checks come when the model is read)."""
        check_choices(self)
        _at_least(self, "max_model_len", 1, optional=True)
        _at_least(self, "max_logprobs", -1, "-1 for the whole vocabulary")
        _at_least(self, "cpu_threads", 1, optional=True)
        if not isinstance(self.hf_overrides, dict):  # vLLM's Python API also takes a function: not offered
            raise ValueError(
                f"hf_overrides must be a dict (a JSON object), got {type(self.hf_overrides).__name__}"
            )
        resolved_runner(self)


def _at_least(config: object, name: str, low: float, note: str = "", optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ValueError(f"{name} must be >= {low}{f' ({note})' if note else ''}, got {value!r}")


def resolved_runner(config: ModelConfig, pooling_only: bool = False) -> str:
    """generate or pooling, from --runner and vLLM's older --task (auto: pooling for a model without an LM head, an
    encoder or a sequence classifier, as vLLM picks for such architectures); ValueError when they disagree or such
    a model is asked to generate."""
    from_task = {"generate": "generate", "embed": "pooling", "embedding": "pooling"}.get(config.task)
    if config.runner != "auto" and from_task is not None and from_task != config.runner:
        raise ValueError(f"runner {config.runner} and task {config.task} disagree")
    runner = (
        config.runner if config.runner != "auto" else from_task or ("pooling" if pooling_only else "generate")
    )
    if pooling_only and runner != "pooling":
        raise ValueError(
            "runner generate: this model has no language-model head (an encoder or a sequence classifier), it "
            "serves embeddings or scores only (--runner pooling)"
        )
    return runner


@dataclass
class CacheConfig:
    block_size: int = 16
    """Tokens per KV cache block."""

    kv_cache_memory_bytes: int | None = None
    """KV cache budget in bytes. Default: VLLM_CPU_KVCACHE_SPACE GiB if set, else 4 GiB on CPU; on CUDA from --gpu-memory-utilization."""

    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory for weights, activations and KV cache (CUDA only)."""

    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical prompt prefixes across requests (chained block hashes, LRU eviction)."""

    swap_space: float = 4
    """CPU swap space per device in GiB (vLLM's flag). Neither vLLM V1 nor pagedserve swaps KV blocks (a preempted
    sequence is recomputed), so it is checked (>= 0) and has no effect."""

    kv_cache_dtype: KVCacheDType = "auto"
    """KV cache storage, as vLLM's flag. auto: the model's dtype. fp8 / fp8_e4m3: float8 e4m3 with a scale of 1 (vLLM's default without calibrated scales; values saturate at +-448): half the bytes of bfloat16, so twice the tokens in the same budget and half what decode attention reads. fp8_e5m2 and checkpoint KV scales are refused."""

    def validate(self) -> None:
        check_choices(self)
        _at_least(self, "block_size", 1)
        _at_least(self, "kv_cache_memory_bytes", 1, optional=True)
        _at_least(self, "swap_space", 0, "GiB")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most sequences in one engine step."""

    max_num_batched_tokens: int | None = None
    """Token budget of one engine step; longer prefills are chunked. Default: 4096, and without chunked prefill at
    least max_model_len (vLLM's rule)."""

    enable_chunked_prefill: bool = True
    """Split prompts longer than what is left of a step's budget over several steps (vLLM's flag, on by default).
    --no-enable-chunked-prefill: a prompt is computed in one step or waits (later ones wait behind it), and
    max_num_batched_tokens must be at least max_model_len."""

    long_prefill_token_threshold: int = 0
    """Most tokens one sequence computes in a step (vLLM's flag); 0: only the step's budget limits it. A lower value
    chunks long prompts into several steps, so the sequences decoding beside them keep a short step time."""

    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """fcfs: requests in arrival order. priority (vLLM's): waiting requests by their `priority` (lower first, then
    arrival), and when KV blocks run out the running request with the largest priority value is preempted first."""

    def validate(self) -> None:
        check_choices(self)
        _at_least(self, "max_num_seqs", 1)
        _at_least(self, "max_num_batched_tokens", 1, optional=True)
        _at_least(self, "long_prefill_token_threshold", 0)

    def token_budget(self, max_model_len: int) -> int:
        """max_num_batched_tokens as the engine uses it; ValueError naming the field when it cannot hold a whole
        prompt and chunked prefill is off (vLLM's check and message)."""
        if self.enable_chunked_prefill:
            given = self.max_num_batched_tokens
            return DEFAULT_MAX_NUM_BATCHED_TOKENS if given is None else given
        if self.long_prefill_token_threshold:
            raise ValueError(
                "long_prefill_token_threshold chunks long prompts: it needs chunked prefill (--enable-chunked-prefill)"
            )
        if self.max_num_batched_tokens is None:
            return max(max_model_len, DEFAULT_MAX_NUM_BATCHED_TOKENS)
        if self.max_num_batched_tokens < max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                f"({max_model_len}). This effectively limits the maximum sequence length to max_num_batched_tokens "
                "and makes vLLM reject longer sequences. Please increase max_num_batched_tokens or decrease "
                "max_model_len."
            )
        return self.max_num_batched_tokens


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Ranks each layer is sharded across (tensor parallelism): one worker process per rank, torch.distributed
    (gloo on the CPU, NCCL on CUDA). Attention splits by KV-head groups, unevenly where the heads do not divide
    (distributed/partition.py); sizes the heads cannot be split over are refused."""

    pipeline_parallel_size: int = 1
    """Pipeline stages. Only 1 is supported; scale out with more replicas."""

    nnodes: int = 1
    """Nodes one replica's tensor-parallel ranks span (vLLM's flag): node 0 runs the API server and the first
    tensor_parallel_size / nnodes ranks, every other node (--node-rank, --headless) the next ones."""

    node_rank: int = 0
    """This node's place among --nnodes; nodes other than 0 run headless."""

    master_addr: str = "127.0.0.1"
    """Address of node 0, where the ranks of several nodes meet (a TCPStore on --master-port)."""

    master_port: int = 0
    """Port of that meeting point on node 0; 0 (a single node only): a free port."""

    headless: bool = False
    """Run only this node's tensor-parallel workers, no API server (every node but node 0 of a multi-node replica)."""

    distributed_executor_backend: str | None = None
    """How the tensor-parallel ranks run (vLLM's flag): mp (worker processes, the only way here) or uni (one
    process: tensor_parallel_size 1). ray and external_launcher are refused: Kubernetes places the pods."""

    disable_custom_all_reduce: bool = False
    """Reduce across ranks with torch.distributed only (vLLM's flag). On the CPU the ranks of one node otherwise
    all-reduce through shared memory (distributed/shm_collectives.py); CUDA always uses NCCL."""

    def validate(self) -> None:
        """ValueError naming the field; the heads' split is checked against the model (distributed/partition.py)."""
        check_choices(self)
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.pipeline_parallel_size != 1:
            raise ValueError("pipeline_parallel_size > 1 is not supported; scale out with replicas")
        if self.nnodes < 1 or self.tensor_parallel_size % self.nnodes:
            raise ValueError(
                f"nnodes must be >= 1 and divide tensor_parallel_size ({self.tensor_parallel_size}), got {self.nnodes}"
            )
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not 0 < self.master_port < 65536:
            raise ValueError("master_port must be a port (1-65535) when nnodes > 1: every node must know it")
        if (self.headless or self.node_rank > 0) and self.nnodes == 1:
            raise ValueError("headless / node_rank > 0 only make sense with nnodes > 1")
        backend = self.distributed_executor_backend
        if backend in ("ray", "external_launcher"):
            raise ValueError(
                f"distributed_executor_backend {backend} is not supported: the ranks of a replica are worker "
                "processes (mp), and Kubernetes places the pods (the chart's multi-node mode runs one per node)"
            )
        if backend not in (None, "mp", "uni"):
            raise ValueError(f"distributed_executor_backend must be mp or uni, got {backend!r}")
        if backend == "uni" and self.tensor_parallel_size > 1:
            raise ValueError(
                "distributed_executor_backend uni runs one process: tensor_parallel_size must be 1"
            )

    @property
    def ranks_per_node(self) -> int:
        return self.tensor_parallel_size // self.nnodes


@dataclass
class LoRAConfig:
    enable_lora: bool = False
    """Serve LoRA adapters (PEFT folders) on top of the model: a request names one in its `model` field (vLLM's
    flag; adapters come from --lora-modules, or at run time with VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""

    max_loras: int = 1
    """Most adapters in one engine step (vLLM's flag); requests for other adapters wait until one is done."""

    max_lora_rank: int = 16
    """Largest adapter rank (r) accepted; adapters above it are refused when loaded."""

    max_cpu_loras: int | None = None
    """Adapters the workers keep loaded (vLLM's flag): the least recently used one beyond this is dropped and read
    from its folder again when a request needs it. Default: max_loras."""

    lora_dtype: Literal["auto", "float32"] = "auto"
    """The adapters' dtype (vLLM's flag): pagedserve keeps them in float32 and rounds each layer's output once to
    the model's dtype, whichever is given; 16-bit adapter storage is not offered."""

    def validate(self) -> None:
        """ValueError naming the field (lora_dtype's choices with the reason, not check_choices' generic line)."""
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.lora_dtype not in ("auto", "float32"):
            raise ValueError(
                f"lora_dtype must be auto or float32 (adapters are kept in float32), got {self.lora_dtype!r}"
            )
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")

    @property
    def cache_size(self) -> int:
        return self.max_cpu_loras or self.max_loras


@dataclass
class EngineConfig:
    """Everything the engine needs; the server and the LLM class build one of these."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
    speculative: SpeculativeConfig | None = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def validate(self) -> None:
        """Every section's own checks: ValueError naming the field. The CLI, the LLM class and the engine core call
        it, so a value is refused the same way whichever way it came in."""
        for section in (
            self.model,
            self.cache,
            self.scheduler,
            self.parallel,
            self.lora,
            self.structured_outputs,
        ):
            section.validate()
        if self.speculative is not None:
            self.speculative.validate()


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source (the string literal after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def check_choices(config: object) -> None:
    """ValueError naming the field when a Literal-typed field of a config dataclass holds another value (flags get
    argparse's check; this one is for the LLM class's keyword arguments)."""
    hints = typing.get_type_hints(type(config))
    for f in config_fields(type(config)):
        hint = hints[f.name]
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        literal = hint if typing.get_origin(hint) is Literal else (options[0] if len(options) == 1 else None)
        value = getattr(config, f.name)
        if literal is None or typing.get_origin(literal) is not Literal or value is None:
            continue
        if value not in typing.get_args(literal):
            raise ValueError(
                f"{f.name} must be one of {', '.join(map(str, typing.get_args(literal)))}, got {value!r}"
            )
