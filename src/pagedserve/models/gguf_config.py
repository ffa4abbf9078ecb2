"""GGUF metadata → a transformers config (EOS ids and sampling defaults: gguf_metadata.py).

Key names follow the GGUF spec (`{arch}.block_count`, `tokenizer.ggml.eos_token_id`, ...); the field-to-config
correspondence is the one llama.cpp's converter writes and transformers' own GGUF loader reads back.
"""

from __future__ import annotations

import pathlib
from typing import Any

import gguf
import numpy as np
import transformers

from pagedserve.models.gguf_arch_configs import (
    cohere_config,
    gemma2_config,
    gemma3_config,
    moe_config,
    phi3_config,
)
from pagedserve.models.gguf_metadata import field_length, field_value, find_tensor, required_field
from pagedserve.models.gguf_rope import llama3_rope_from_freq_factors

SUPPORTED_GGUF_ARCHITECTURES = (
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "smollm3", "olmo2",
    "glm4", "command-r", "cohere2",
)  # fmt: skip
_SUPPORTED_HINT = (
    "supported: llama (Llama 2/3, Mistral, Mixtral, SmolLM2), qwen2, qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3, "
    "granite, smollm3, olmo2, glm4, command-r and cohere2"
)


def gguf_architecture(reader: gguf.GGUFReader, path: pathlib.Path) -> str:
    architecture = field_value(reader, "general.architecture")
    if architecture is None:
        raise ValueError(f"GGUF file {path} has no general.architecture metadata")
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {architecture!r} of {path} is not supported ({_SUPPORTED_HINT})")
    return architecture


def _uniform_count(value: int | list[int], key: str, path: pathlib.Path) -> int:
    """Head counts may be stored per layer; only models with the same count in every layer are served."""
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise ValueError(f"GGUF file {path}: per-layer {key} {sorted(set(value))} is not supported")
        return value[0]
    return value


def _rope_scaling(
    reader: gguf.GGUFReader, arch: str, path: pathlib.Path, rope_theta: float, head_dim: int
) -> dict[str, Any] | None:
    scaling_type = field_value(reader, f"{arch}.rope.scaling.type")
    factor = field_value(reader, f"{arch}.rope.scaling.factor")
    original = field_value(reader, f"{arch}.rope.scaling.original_context_length")
    if scaling_type in (None, "none"):
        # Llama 3.x files store the frequency divisors as a tensor instead of metadata.
        freq_tensor = find_tensor(reader, "rope_freqs.weight")
        if freq_tensor is None:
            return None
        factors = np.asarray(freq_tensor.data, dtype=np.float64).reshape(-1)
        return llama3_rope_from_freq_factors(factors, rope_theta, head_dim, original, path)
    if factor is None:
        raise ValueError(
            f"GGUF file {path}: rope scaling {scaling_type!r} without {arch}.rope.scaling.factor"
        )
    if scaling_type == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if scaling_type == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor)}
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        for gguf_suffix, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = field_value(reader, f"{arch}.rope.scaling.{gguf_suffix}")
            if value is not None:
                scaling[hf_key] = float(value)
        return scaling
    raise ValueError(
        f"GGUF file {path}: rope scaling type {scaling_type!r} is not supported (none, linear, yarn)"
    )


def build_gguf_config(reader: gguf.GGUFReader, path: pathlib.Path) -> transformers.PretrainedConfig:
    """A LlamaConfig / MistralConfig / Qwen2Config / Qwen3Config equal to what the original checkpoint's config.json says, as
    far as GGUF metadata records it."""
    arch = gguf_architecture(reader, path)
    num_experts = int(field_value(reader, f"{arch}.expert_count", 0) or 0)
    if arch.endswith("moe") and not num_experts:
        raise ValueError(f"GGUF file {path}: architecture {arch} without {arch}.expert_count")
    hidden_size = int(required_field(reader, f"{arch}.embedding_length", path))
    num_heads = _uniform_count(
        required_field(reader, f"{arch}.attention.head_count", path), "head_count", path
    )
    num_kv_heads = _uniform_count(
        field_value(reader, f"{arch}.attention.head_count_kv", num_heads), "head_count_kv", path
    )
    head_dim = field_value(reader, f"{arch}.attention.key_length")
    if head_dim is None and arch == "llama":
        head_dim = field_value(reader, f"{arch}.rope.dimension_count")
    head_dim = int(head_dim) if head_dim is not None else hidden_size // num_heads

    embedding = find_tensor(reader, "token_embd.weight")
    if embedding is None:
        raise ValueError(f"GGUF file {path} has no token_embd.weight tensor")
    # The embedding's row count is what the weights need; it equals len(tokenizer.ggml.tokens) in practice.
    vocab_size = (
        int(embedding.shape[1])
        if len(embedding.shape) == 2
        else field_length(reader, "tokenizer.ggml.tokens")
    )

    if num_experts and arch.endswith("moe"):  # the dense width, unused by these files' all-sparse layers
        dense_width = field_value(reader, f"{arch}.feed_forward_length")
        dense_width = dense_width or required_field(reader, f"{arch}.expert_feed_forward_length", path)
    else:
        dense_width = required_field(reader, f"{arch}.feed_forward_length", path)
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": int(dense_width),
        "num_hidden_layers": int(required_field(reader, f"{arch}.block_count", path)),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": float(
            required_field(reader, f"{arch}.attention.{_NORM_EPS.get(arch, 'layer_norm_rms_epsilon')}", path)
        ),
        "tie_word_embeddings": find_tensor(reader, "output.weight") is None,
        "bos_token_id": field_value(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field_value(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": field_value(reader, "tokenizer.ggml.padding_token_id"),
    }
    context_length = field_value(reader, f"{arch}.context_length")
    if context_length is not None:
        kwargs["max_position_embeddings"] = int(context_length)
    rope_theta = field_value(reader, f"{arch}.rope.freq_base")
    if rope_theta is not None:
        kwargs["rope_theta"] = float(rope_theta)
    default_theta = 1_000_000.0 if arch.startswith("qwen") else 10_000.0
    rope_scaling = _rope_scaling(reader, arch, path, kwargs.get("rope_theta", default_theta), head_dim)
    if rope_scaling is not None:
        kwargs["rope_scaling"] = rope_scaling

    if num_experts:
        return moe_config(reader, arch, path, num_experts, head_dim, kwargs)
    if arch == "gemma3":
        return gemma3_config(reader, path, head_dim, kwargs)
    if arch == "gemma2":
        return gemma2_config(reader, path, head_dim, kwargs)
    if arch == "phi3":
        return phi3_config(reader, path, head_dim, kwargs)
    if arch == "granite":  # llama.cpp's names for Granite's four scalars
        scalars = {
            hf: float(required_field(reader, f"granite.{key}", path))
            for hf, key in (
                ("embedding_multiplier", "embedding_scale"), ("residual_multiplier", "residual_scale"),
                ("attention_multiplier", "attention.scale"), ("logits_scaling", "logit_scale"),
            )
        }  # fmt: skip
        return transformers.GraniteConfig(architectures=["GraniteForCausalLM"], **scalars, **kwargs)
    if arch == "smollm3":  # llama.cpp: no rope on every fourth layer, as the config's default
        return transformers.SmolLM3Config(architectures=["SmolLM3ForCausalLM"], **kwargs)
    if arch == "olmo2":
        if head_dim != hidden_size // num_heads:
            raise ValueError(
                f"GGUF file {path}: olmo2 with head_dim {head_dim} != hidden/heads is not supported"
            )
        return transformers.Olmo2Config(architectures=["Olmo2ForCausalLM"], **kwargs)
    if (
        arch == "glm4"
    ):  # GLM-4-0414: llama.cpp keeps the checkpoint's interleaved rotary pairs (models/glm.py)
        rotary = int(field_value(reader, "glm4.rope.dimension_count", head_dim // 2))
        bias = any(find_tensor(reader, f"blk.0.{n}.bias") is not None for n in ("attn_q", "attn_qkv"))
        return transformers.Glm4Config(
            architectures=["Glm4ForCausalLM"], head_dim=head_dim, attention_bias=bias,
            partial_rotary_factor=rotary / head_dim, **kwargs,
        )  # fmt: skip
    if arch in ("command-r", "cohere2"):
        return cohere_config(reader, arch, path, kwargs)
    if arch == "qwen2":
        if head_dim != hidden_size // num_heads:
            raise ValueError(
                f"GGUF file {path}: qwen2 with head_dim {head_dim} != hidden/heads is not supported"
            )
        return transformers.Qwen2Config(architectures=["Qwen2ForCausalLM"], **kwargs)
    kwargs["head_dim"] = head_dim
    if arch == "qwen3":
        return transformers.Qwen3Config(architectures=["Qwen3ForCausalLM"], **kwargs)
    # llama.cpp files Mistral under the llama architecture; the model name is the only trace left.
    if "mistral" in str(field_value(reader, "general.name", "")).lower():
        # llama.cpp runs these without a sliding window, so pagedserve does too.
        return transformers.MistralConfig(architectures=["MistralForCausalLM"], sliding_window=None, **kwargs)
    return transformers.LlamaConfig(architectures=["LlamaForCausalLM"], **kwargs)


# Cohere's LayerNorm: llama.cpp records its epsilon under the plain key.
_NORM_EPS = {"command-r": "layer_norm_epsilon", "cohere2": "layer_norm_epsilon"}
