"""The transformers configs of the GGUF architectures whose fields go beyond the common ones (gguf_config.py's
build_gguf_config): Command R / Cohere 2, the mixtures of experts, Gemma 2 and 3, and Phi-3 / Phi-4, each as
llama.cpp runs it."""

from __future__ import annotations

import pathlib
from typing import Any

import gguf
import numpy as np
import transformers

from pagedserve.models.gguf_metadata import field_value, find_tensor, required_field


def cohere_config(
    reader: gguf.GGUFReader, arch: str, path: pathlib.Path, kwargs: dict[str, Any]
) -> transformers.PretrainedConfig:
    """Command R (command-r) and Command R7B / A (cohere2) as llama.cpp runs them: LayerNorm epsilon and logit scale
    from metadata, the checkpoint's interleaved rotary rows (models/cohere.py reorders them); cohere2's window on
    three layers of four (llama.cpp's swa pattern), the fourth without rotary positions."""
    kwargs["layer_norm_eps"] = kwargs.pop("rms_norm_eps")
    kwargs["logit_scale"] = float(field_value(reader, f"{arch}.logit_scale", 1.0))
    kwargs["use_qk_norm"] = find_tensor(reader, "blk.0.attn_q_norm.weight") is not None
    if arch == "command-r":
        return transformers.CohereConfig(architectures=["CohereForCausalLM"], **kwargs)
    pattern = int(field_value(reader, "cohere2.attention.sliding_window_pattern", 4) or 4)
    layers = kwargs["num_hidden_layers"]
    return transformers.Cohere2Config(
        architectures=["Cohere2ForCausalLM"], sliding_window=int(required_field(reader, f"{arch}.attention.sliding_window", path)),
        layer_types=["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)], **kwargs,
    )  # fmt: skip


def moe_config(
    reader: gguf.GGUFReader,
    arch: str,
    path: pathlib.Path,
    num_experts: int,
    head_dim: int,
    kwargs: dict[str, Any],
) -> transformers.PretrainedConfig:
    """Mixtral (llama with experts), Qwen2-MoE and Qwen3-MoE as llama.cpp runs them: every layer sparse; top-k
    weights renormalized for Mixtral and Qwen3-MoE, not for Qwen2-MoE (llama.cpp's norm_w per architecture, the
    released configs' norm_topk_prob)."""
    top_k = int(required_field(reader, f"{arch}.expert_used_count", path))
    if arch == "llama":
        return transformers.MixtralConfig(
            architectures=["MixtralForCausalLM"], num_local_experts=num_experts, num_experts_per_tok=top_k,
            sliding_window=None, head_dim=head_dim, **kwargs,
        )  # fmt: skip
    moe = {
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": int(required_field(reader, f"{arch}.expert_feed_forward_length", path)),
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
    if arch == "qwen3moe":
        return transformers.Qwen3MoeConfig(
            architectures=["Qwen3MoeForCausalLM"], norm_topk_prob=True, head_dim=head_dim, **moe, **kwargs
        )
    if head_dim != kwargs["hidden_size"] // kwargs["num_attention_heads"]:
        raise ValueError(
            f"GGUF file {path}: qwen2moe with head_dim {head_dim} != hidden/heads is not supported"
        )
    shared = int(field_value(reader, f"{arch}.expert_shared_feed_forward_length", 0) or 0)
    return transformers.Qwen2MoeConfig(
        architectures=["Qwen2MoeForCausalLM"], norm_topk_prob=False, shared_expert_intermediate_size=shared,
        **moe, **kwargs,
    )  # fmt: skip


def gemma2_config(
    reader: gguf.GGUFReader, path: pathlib.Path, head_dim: int, kwargs: dict[str, Any]
) -> transformers.PretrainedConfig:
    """Gemma 2 as llama.cpp runs it: even layers local (the file's sliding window), odd ones global, one rope theta,
    the soft-caps from metadata, and an attention scale of 1/sqrt(head_dim) except for the 46-layer 27B, whose
    query_pre_attn_scalar is hidden / heads (144): the rule llama.cpp hard-codes by size."""
    window = field_value(reader, "gemma2.attention.sliding_window")
    layers = kwargs["num_hidden_layers"]
    sliding = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    scalar = kwargs["hidden_size"] // kwargs["num_attention_heads"] if layers == 46 else head_dim
    rope = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 10_000.0)}
    rope.update(kwargs.pop("rope_scaling", None) or {})
    caps = {
        name: float(value) if value else None
        for name in ("attn_logit_softcapping", "final_logit_softcapping")
        for value in [field_value(reader, f"gemma2.{name}")]
    }
    return transformers.Gemma2Config(
        architectures=["Gemma2ForCausalLM"], head_dim=head_dim, sliding_window=int(window or 0) or None,
        layer_types=sliding if window else ["full_attention"] * layers, query_pre_attn_scalar=scalar,
        rope_parameters=rope, hidden_activation="gelu_pytorch_tanh", **caps, **kwargs,
    )  # fmt: skip


def gemma3_config(
    reader: gguf.GGUFReader, path: pathlib.Path, head_dim: int, kwargs: dict[str, Any]
) -> transformers.PretrainedConfig:
    """Gemma 3 as llama.cpp runs it: five local layers (the file's sliding window, rope theta 10 000, unscaled) then
    one global (the file's theta and rope scaling), and an attention scale of 1/sqrt(head_dim) except for the
    62-layer 27B, whose query_pre_attn_scalar is hidden / heads (168): the rule llama.cpp hard-codes by size."""
    window = field_value(reader, "gemma3.attention.sliding_window")
    layers = kwargs["num_hidden_layers"]
    if window:
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    else:  # llama.cpp: no window key, no local layers (EmbeddingGemma-style files)
        layer_types = ["full_attention"] * layers
    scalar = kwargs["hidden_size"] // kwargs["num_attention_heads"] if layers == 62 else head_dim
    full = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 1_000_000.0)}
    full.update(kwargs.pop("rope_scaling", None) or {})
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}, "full_attention": full}
    return transformers.Gemma3TextConfig(
        architectures=["Gemma3ForCausalLM"], head_dim=head_dim, sliding_window=int(window or 0) or None,
        layer_types=layer_types, query_pre_attn_scalar=scalar, rope_parameters=rope,
        hidden_activation="gelu_pytorch_tanh", **kwargs,
    )  # fmt: skip


def phi3_config(
    reader: gguf.GGUFReader, path: pathlib.Path, head_dim: int, kwargs: dict[str, Any]
) -> transformers.PretrainedConfig:
    """Phi-3 / Phi-4 as llama.cpp's converter writes them: a sliding window of 0 means none (Phi-4), rotary on
    `rope.dimension_count` of each head's dims (Phi-4-mini: 96 of 128), LongRoPE's factor sets as the
    rope_factors_long / _short tensors with the cos/sin factor in `rope.scaling.attn_factor` (Phi-3 128k, Phi-3.5,
    Phi-4-mini)."""
    rotary = int(field_value(reader, "phi3.rope.dimension_count") or head_dim)
    if rotary > head_dim or rotary % 2:
        raise ValueError(f"GGUF file {path}: phi3.rope.dimension_count {rotary} for heads of {head_dim}")
    window = int(field_value(reader, "phi3.attention.sliding_window", 0) or 0)
    original = field_value(reader, "phi3.rope.scaling.original_context_length")
    if original is not None:
        kwargs["original_max_position_embeddings"] = int(original)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", 10_000.0)}
    rope.update(kwargs.pop("rope_scaling", None) or {})
    long_factors = find_tensor(reader, "rope_factors_long.weight")
    if long_factors is not None:
        short_factors = find_tensor(reader, "rope_factors_short.weight")
        if short_factors is None or original is None:
            raise ValueError(
                f"GGUF file {path}: LongRoPE needs rope_factors_short and phi3.rope.scaling.original_context_length"
            )
        rope.update(
            rope_type="longrope", original_max_position_embeddings=int(original),
            long_factor=np.asarray(long_factors.data, dtype=np.float64).reshape(-1).tolist(),
            short_factor=np.asarray(short_factors.data, dtype=np.float64).reshape(-1).tolist(),
        )  # fmt: skip
        attn_factor = field_value(reader, "phi3.rope.scaling.attn_factor")
        if attn_factor is not None:
            rope["attention_factor"] = float(attn_factor)
    if rotary != head_dim:
        rope["partial_rotary_factor"] = rotary / head_dim
    return transformers.Phi3Config(
        architectures=["Phi3ForCausalLM"],
        sliding_window=window or None,
        hidden_act="silu",
        rope_parameters=rope,
        **kwargs,
    )
