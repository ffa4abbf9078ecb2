"""Typed configuration. Each field's docstring is its CLI help (see `cli/args.py`) and the chart's values doc.

Flags are the field names with dashes, spelled as vLLM's (`--max-model-len`, `--block-size`, ...).
Runtime-derived values (number of KV blocks, EOS ids) do not live here: see `EngineInfo` in `outputs.py`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from pagedserve.json_configs import SpeculativeConfig, StructuredOutputsConfig

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
LoadFormat = Literal["auto", "safetensors", "gguf", "dummy"]
DeviceName = Literal["auto", "cpu", "cuda"]
KVCacheDType = Literal["auto", "fp8", "fp8_e4m3"]


# --quantization values the engine runs (ModelConfig.quantization).
QUANTIZATION_CHOICES = ("gguf", "compressed-tensors", "awq", "gptq", "fp8", "none")


@dataclass
class ModelConfig:
    model: str | None = None
    """Hugging Face model folder or GGUF file. Empty: the bundled SmolLM2-135M-Instruct GGUF."""

    tokenizer: str | None = None
    """Tokenizer folder; defaults to the model's own."""

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

    seed: int = 0
    """Seed for random weights (dummy) and for sampling of requests that give no seed."""

    generation_config: str = "auto"
    """Where default sampling parameters come from (vLLM's flag): auto (the model's generation_config.json, or a
    GGUF's general.sampling.*), vllm (none: vLLM's defaults), or a folder holding a generation_config.json. They
    apply to fields a request leaves unset; max_new_tokens caps max_tokens."""

    chat_template: str | None = None
    """Jinja chat template file or inline string overriding the tokenizer's."""

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

    kv_cache_dtype: KVCacheDType = "auto"
    """KV cache storage, as vLLM's flag. auto: the model's dtype. fp8 / fp8_e4m3: float8 e4m3 with a scale of 1 (vLLM's default without calibrated scales; values saturate at +-448): half the bytes of bfloat16, so twice the tokens in the same budget and half what decode attention reads. fp8_e5m2 and checkpoint KV scales are refused."""


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most sequences in one engine step."""

    max_num_batched_tokens: int = 4096
    """Token budget of one engine step; longer prefills are chunked."""

    long_prefill_token_threshold: int = 0
    """Most tokens one sequence computes in a step (vLLM's flag); 0: only the step's budget limits it. A lower value
    chunks long prompts into several steps, so the sequences decoding beside them keep a short step time."""

    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """fcfs: requests in arrival order. priority (vLLM's): waiting requests by their `priority` (lower first, then
    arrival), and when KV blocks run out the running request with the largest priority value is preempted first."""


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

    def validate(self) -> None:
        """ValueError naming the field; the heads' split is checked against the model (distributed/partition.py)."""
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
        """ValueError naming the field."""
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


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    """Address to bind."""

    port: int = 8000
    """Port to bind."""

    served_model_name: list[str] | None = None
    """Names the API accepts in the model field; the first is reported. Default: the model path's name."""

    api_key: str | None = None
    """Require this bearer key on every route but probes (also from VLLM_API_KEY or PAGEDSERVE_API_KEY)."""

    max_num_queued_reqs: int = 1024
    """Requests admitted but not yet finished beyond which new ones get 503 with Retry-After."""

    max_request_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger ones get 413 before parsing."""

    max_n: int = 16
    """Largest n (samples per request) accepted."""

    shutdown_timeout: float = 30.0
    """Seconds in-flight requests get to finish after SIGTERM."""

    disable_log_requests: bool = False
    """Do not log one line per finished request."""

    disable_log_stats: bool = False
    """Do not log the periodic stats line."""

    uvicorn_log_level: str = "info"
    """Log level of uvicorn."""

    metrics_require_auth: bool = False
    """Also require the API key on /metrics (open by default so Prometheus can scrape)."""

    enable_server_load_tracking: bool = False
    """GET /load reports the requests in flight (vLLM's flag; without it /load says 0, as vLLM's)."""

    ready_stall_seconds: float = 30.0
    """/ready turns 503 when the engine has work but made no step for this long (wedged engine)."""

    enable_auto_tool_choice: bool = False
    """Allow tool_choice "auto" (also the default when a request has tools): the model decides, and
    --tool-call-parser reads its calls out of the text. "required" and named choices work without it (a grammar)."""

    return_tokens_as_token_ids: bool = False
    """Name logprobs' tokens "token_id:N" rather than by their text (vLLM's flag; a request can also ask), so tokens
    that are not valid UTF-8 on their own stay identifiable."""

    reasoning_parser: Literal["deepseek_r1", "qwen3"] | None = None
    """Split a thinking model's <think>...</think> text into the chat message's `reasoning` field (vLLM's flag):
    deepseek_r1 (DeepSeek-R1, QwQ: the block may open in the prompt) or qwen3 (Qwen3: the model opens it)."""

    lora_modules: list[str] | None = None
    """LoRA adapters to serve (vLLM's flag, with --enable-lora): name=path, or JSON {"name": ..., "path": ...,
    "base_model_name": ...}; a request selects one by giving its name as the model."""

    tool_call_parser: str | None = None
    """How the model writes tool calls, for tool_choice "auto": hermes (<tool_call>{...}</tool_call>: Hermes,
    Qwen) or llama3_json ({"name": ..., "parameters": ...}: Llama 3.x)."""


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
