"""Engine ↔ server/user vocabulary, shaped as vLLM's RequestOutput / CompletionOutput."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# One position's log-probabilities: token id -> Logprob (the sampled token is always included).
LogprobsDict = dict[int, "Logprob"]
# (token ids, logprobs, rank of the chosen token) for one position; the chosen token comes first.
PositionLogprobs = tuple[list[int], list[float], int]


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str  # cumulative text so far (streaming clients diff against what they sent)
    token_ids: list[int]  # cumulative generated token ids
    cumulative_logprob: float | None = None
    logprobs: list[LogprobsDict] | None = None  # one dict per generated token when requested
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | None while running
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    embedding: list[float] | None = None  # an embedding request's vector (--runner pooling); no tokens then

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float  # time.time() when the engine accepted it
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[LogprobsDict | None] | None = None  # first entry is None (no context)
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """vLLM's: what LLM.embed returns for one prompt."""

    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput:
    """vLLM's: what LLM.score returns for one pair."""

    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ClassificationRequestOutput:
    """vLLM's: what LLM.classify returns for one prompt."""

    request_id: str
    outputs: ClassificationOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass
class EngineInfo:
    """Values known only once the engine has loaded: what the server reports and the metrics label."""

    model_name: str  # path or bundled name
    max_model_len: int
    vocab_size: int
    block_size: int
    num_kv_blocks: int
    kv_cache_bytes: int
    enable_prefix_caching: bool
    dtype: str
    device: str
    eos_token_ids: list[int] = field(default_factory=list)
    cpu_kernels: str = ""  # ISA level of the C kernels in use ("" on CUDA or when the PyTorch paths run)
    # the matrices' dtype when it differs from `dtype` (bfloat16 under float32 compute)
    weight_dtype: str = ""
    quantization: str = ""  # "gguf" when GGUF blocks are kept, "" for float weights
    weight_bytes: int = 0  # bytes of the model's parameters as held in memory
    kv_cache_dtype: str = ""  # the KV cache's storage dtype ("float8_e4m3fn" with --kv-cache-dtype fp8)
    # The model's generation_config defaults (--generation-config), as SamplingParams fields; filled by the front end.
    default_sampling_params: dict[str, Any] = field(default_factory=dict)
    scheduling_policy: str = "fcfs"  # --scheduling-policy: a request's priority counts only under "priority"
    num_speculative_tokens: int = 0  # --speculative-config's draft length; 0 without speculative decoding
    max_loras: int = 0  # --max-loras with --enable-lora; 0: no LoRA adapters
    max_logprobs: int = 20  # --max-logprobs, -1 resolved to the vocabulary size
    runner: str = "generate"  # "pooling": embeddings only (--runner pooling)
    # With runner "pooling": "embed" (a vector a text), "score" (a one-label classifier: a cross-encoder's pairs,
    # also /classify) or "classify" (several labels).
    pooling_task: str = ""
    labels: list[str] = field(
        default_factory=list
    )  # a classifier's label names, by index (config's id2label)
    # The most tokens one sequence can ever hold in the KV pool, over all its KV cache groups (window groups hold a
    # window's blocks); 0: num_kv_blocks x block_size.
    max_sequence_tokens: int = 0
