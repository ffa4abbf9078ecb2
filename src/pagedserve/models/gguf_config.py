"""GGUF metadata → a transformers config, EOS ids and sampling defaults.

Key names follow the GGUF spec (`{arch}.block_count`, `tokenizer.ggml.eos_token_id`, ...); the field-to-config
correspondence is the one llama.cpp's converter writes and transformers' own GGUF loader reads back.
"""

from __future__ import annotations

import pathlib
from typing import Any

import gguf
import numpy as np
import transformers

from pagedserve.models.gguf_rope import llama3_rope_from_freq_factors

SUPPORTED_GGUF_ARCHITECTURES = (
    "llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma2", "gemma3", "phi3", "granite", "smollm3", "olmo2",
    "glm4", "command-r", "cohere2",
)  # fmt: skip
_SUPPORTED_HINT = (
    "supported: llama (Llama 2/3, Mistral, Mixtral, SmolLM2), qwen2, qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3, "
    "granite, smollm3, olmo2, glm4, command-r and cohere2"
)

# general.sampling.* keys (written by recent llama.cpp converters) → Hugging Face generation_config names.
_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}

_INTEGER_TYPES = {
    gguf.GGUFValueType.UINT8,
    gguf.GGUFValueType.INT8,
    gguf.GGUFValueType.UINT16,
    gguf.GGUFValueType.INT16,
    gguf.GGUFValueType.UINT32,
    gguf.GGUFValueType.INT32,
    gguf.GGUFValueType.UINT64,
    gguf.GGUFValueType.INT64,
}
_FLOAT_TYPES = {gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64}


def _decode_scalar(part: np.ndarray, value_type: gguf.GGUFValueType) -> Any:
    if value_type == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    if value_type in _INTEGER_TYPES:
        return int(part[0])
    if value_type in _FLOAT_TYPES:
        return float(part[0])
    if value_type == gguf.GGUFValueType.BOOL:
        return bool(part[0])
    raise ValueError(f"unexpected GGUF value type {value_type!r}")


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The decoded value of a metadata key: str, int, float, bool, or a list of those for arrays."""
    field = reader.fields.get(key)
    if field is None:
        return default
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [_decode_scalar(field.parts[index], field.types[-1]) for index in field.data]
    return _decode_scalar(field.parts[field.data[0]], field.types[0])


def field_length(reader: gguf.GGUFReader, key: str) -> int:
    """Number of items of an array field without decoding it (the token list has ~10^5 strings)."""
    field = reader.fields.get(key)
    return 0 if field is None else len(field.data)


def gguf_architecture(reader: gguf.GGUFReader, path: pathlib.Path) -> str:
    architecture = field_value(reader, "general.architecture")
    if architecture is None:
        raise ValueError(f"GGUF file {path} has no general.architecture metadata")
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF architecture {architecture!r} of {path} is not supported ({_SUPPORTED_HINT})")
    return architecture


def _required(reader: gguf.GGUFReader, key: str, path: pathlib.Path) -> Any:
    value = field_value(reader, key)
    if value is None:
        raise ValueError(f"GGUF file {path} lacks the metadata key {key!r}")
    return value


def _uniform_count(value: int | list[int], key: str, path: pathlib.Path) -> int:
    """Head counts may be stored per layer; only models with the same count in every layer are served."""
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise ValueError(f"GGUF file {path}: per-layer {key} {sorted(set(value))} is not supported")
        return value[0]
    return value


def _find_tensor(reader: gguf.GGUFReader, name: str) -> Any:
    return next((tensor for tensor in reader.tensors if tensor.name == name), None)


def _rope_scaling(
    reader: gguf.GGUFReader, arch: str, path: pathlib.Path, rope_theta: float, head_dim: int
) -> dict[str, Any] | None:
    scaling_type = field_value(reader, f"{arch}.rope.scaling.type")
    factor = field_value(reader, f"{arch}.rope.scaling.factor")
    original = field_value(reader, f"{arch}.rope.scaling.original_context_length")
    if scaling_type in (None, "none"):
        # Llama 3.x files store the frequency divisors as a tensor instead of metadata.
        freq_tensor = _find_tensor(reader, "rope_freqs.weight")
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
    hidden_size = int(_required(reader, f"{arch}.embedding_length", path))
    num_heads = _uniform_count(_required(reader, f"{arch}.attention.head_count", path), "head_count", path)
    num_kv_heads = _uniform_count(
        field_value(reader, f"{arch}.attention.head_count_kv", num_heads), "head_count_kv", path
    )
    head_dim = field_value(reader, f"{arch}.attention.key_length")
    if head_dim is None and arch == "llama":
        head_dim = field_value(reader, f"{arch}.rope.dimension_count")
    head_dim = int(head_dim) if head_dim is not None else hidden_size // num_heads

    embedding = _find_tensor(reader, "token_embd.weight")
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
        dense_width = dense_width or _required(reader, f"{arch}.expert_feed_forward_length", path)
    else:
        dense_width = _required(reader, f"{arch}.feed_forward_length", path)
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": int(dense_width),
        "num_hidden_layers": int(_required(reader, f"{arch}.block_count", path)),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": float(
            _required(reader, f"{arch}.attention.{_NORM_EPS.get(arch, 'layer_norm_rms_epsilon')}", path)
        ),
        "tie_word_embeddings": _find_tensor(reader, "output.weight") is None,
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
        return _moe_config(reader, arch, path, num_experts, head_dim, kwargs)
    if arch == "gemma3":
        return _gemma3_config(reader, path, head_dim, kwargs)
    if arch == "gemma2":
        return _gemma2_config(reader, path, head_dim, kwargs)
    if arch == "phi3":
        return _phi3_config(reader, path, head_dim, kwargs)
    if arch == "granite":  # llama.cpp's names for Granite's four scalars
        scalars = {
            hf: float(_required(reader, f"granite.{key}", path))
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
        bias = any(_find_tensor(reader, f"blk.0.{n}.bias") is not None for n in ("attn_q", "attn_qkv"))
        return transformers.Glm4Config(
            architectures=["Glm4ForCausalLM"], head_dim=head_dim, attention_bias=bias,
            partial_rotary_factor=rotary / head_dim, **kwargs,
        )  # fmt: skip
    if arch in ("command-r", "cohere2"):
        return _cohere_config(reader, arch, path, kwargs)
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


def _cohere_config(
    reader: gguf.GGUFReader, arch: str, path: pathlib.Path, kwargs: dict[str, Any]
) -> transformers.PretrainedConfig:
    """Command R (command-r) and Command R7B / A (cohere2) as llama.cpp runs them: LayerNorm epsilon and logit scale
    from metadata, the checkpoint's interleaved rotary rows (models/cohere.py reorders them); cohere2's window on
    three layers of four (llama.cpp's swa pattern), the fourth without rotary positions."""
    kwargs["layer_norm_eps"] = kwargs.pop("rms_norm_eps")
    kwargs["logit_scale"] = float(field_value(reader, f"{arch}.logit_scale", 1.0))
    kwargs["use_qk_norm"] = _find_tensor(reader, "blk.0.attn_q_norm.weight") is not None
    if arch == "command-r":
        return transformers.CohereConfig(architectures=["CohereForCausalLM"], **kwargs)
    pattern = int(field_value(reader, "cohere2.attention.sliding_window_pattern", 4) or 4)
    layers = kwargs["num_hidden_layers"]
    return transformers.Cohere2Config(
        architectures=["Cohere2ForCausalLM"], sliding_window=int(_required(reader, f"{arch}.attention.sliding_window", path)),
        layer_types=["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)], **kwargs,
    )  # fmt: skip


def _moe_config(
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
    top_k = int(_required(reader, f"{arch}.expert_used_count", path))
    if arch == "llama":
        return transformers.MixtralConfig(
            architectures=["MixtralForCausalLM"], num_local_experts=num_experts, num_experts_per_tok=top_k,
            sliding_window=None, head_dim=head_dim, **kwargs,
        )  # fmt: skip
    moe = {
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": int(_required(reader, f"{arch}.expert_feed_forward_length", path)),
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


def _gemma2_config(
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


def _gemma3_config(
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


def _phi3_config(
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
    long_factors = _find_tensor(reader, "rope_factors_long.weight")
    if long_factors is not None:
        short_factors = _find_tensor(reader, "rope_factors_short.weight")
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


def gguf_eos_token_ids(reader: gguf.GGUFReader) -> list[int]:
    """End-of-sequence plus end-of-turn / end-of-message ids (Llama 3 chats end with <|eot_id|>)."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = field_value(reader, key)
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def gguf_generation_defaults(reader: gguf.GGUFReader) -> dict[str, Any]:
    return {
        hf_key: value
        for key, hf_key in _SAMPLING_KEYS.items()
        if (value := field_value(reader, key)) is not None
    }
