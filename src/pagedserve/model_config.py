"""The model section of the engine's configuration (`--model`, `--dtype`, `--quantization`, `--max-model-len`, ...):
what is served and how it is read. Each field's docstring is its CLI help (config_fields.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pagedserve.config_fields import at_least, check_choices

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
LoadFormat = Literal["auto", "safetensors", "gguf", "dummy"]
DeviceName = Literal["auto", "cpu", "cuda"]

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
    """Weight and activation dtype. auto: float32 for float32 checkpoints and on CPUs without bfloat16 instructions (AVX512_BF16, AMX), float32 compute for quantized blocks on a CPU (GGUF, AWQ, GPTQ; their matrices count as bfloat16); otherwise bfloat16."""

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
    .gguf file where this CPU's kernels multiply blocks at every batch size (AVX2) and it has no AMX, else "none". A value that
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
        at_least(self, "max_model_len", 1, optional=True)
        at_least(self, "max_logprobs", -1, "-1 for the whole vocabulary")
        at_least(self, "cpu_threads", 1, optional=True)
        if not isinstance(self.hf_overrides, dict):  # vLLM's Python API also takes a function: not offered
            raise ValueError(
                f"hf_overrides must be a dict (a JSON object), got {type(self.hf_overrides).__name__}"
            )
        resolved_runner(self)


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
