"""Typed configuration. Each field's docstring is its CLI help (see `cli/args.py`) and the chart's values doc.

Flags are the field names with dashes, spelled as vLLM's (`--max-model-len`, `--block-size`, ...).
Runtime-derived values (number of KV blocks, EOS ids) do not live here: see `EngineInfo` in `outputs.py`. The
model section is model_config.py, the speculative and structured-output sections json_configs.py, the field
machinery (docs, choices, bounds) config_fields.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pagedserve.config_fields import at_least, check_choices
from pagedserve.json_configs import SpeculativeConfig, StructuredOutputsConfig
from pagedserve.model_config import ModelConfig

KVCacheDType = Literal["auto", "bfloat16", "fp8", "fp8_e4m3"]


# A step's token budget when --max-num-batched-tokens is not given (vLLM's default for chunked prefill).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 4096


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
    """KV cache storage, as vLLM's flag. auto: the model's dtype (bfloat16 where its matrices are bfloat16 under float32 compute: worker/kv_cache.py). bfloat16: bfloat16 whatever the compute dtype. fp8 / fp8_e4m3: float8 e4m3 with a scale of 1 (vLLM's default without calibrated scales; values saturate at +-448): half the bytes of bfloat16, so twice the tokens in the same budget and half what decode attention reads. fp8_e5m2 and checkpoint KV scales are refused."""

    disable_hybrid_kv_cache_manager: bool = False
    """vLLM's flag: sliding-window layers keep every block of their sequence, as full attention does (what they compute is unchanged). By default a model with window layers (Gemma 2 and 3, Mistral v0.1) gives their blocks that no future query can see back to the pool while the sequence runs: at long contexts they hold a window's worth (kv_memory.py)."""

    def validate(self) -> None:
        check_choices(self)
        at_least(self, "block_size", 1)
        at_least(self, "kv_cache_memory_bytes", 1, optional=True)
        at_least(self, "swap_space", 0, "GiB")
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
        at_least(self, "max_num_seqs", 1)
        at_least(self, "max_num_batched_tokens", 1, optional=True)
        at_least(self, "long_prefill_token_threshold", 0)

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
