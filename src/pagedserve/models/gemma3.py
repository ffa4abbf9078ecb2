"""Gemma 3's text decoder: `Gemma3ForCausalLM` (the 1B model, text checkpoints) and the language model of
`Gemma3ForConditionalGeneration` (4B, 12B, 27B: served text-only, the vision tower's weights are not loaded).

The Llama layout (llama.py's attention and gated MLP) with Gemma's changes: RMSNorm scaled by 1 + weight
(layers/layernorm.py::GemmaRMSNorm) on the hidden states, on each q and k head, and four times a layer (before
and after attention, before and after the MLP); a GELU (tanh) gate; embeddings multiplied by sqrt(hidden_size) in
the activations' dtype; attention scaled by query_pre_attn_scalar^-0.5; local layers (`layer_types`
"sliding_attention", five of every six) attending over a sliding window with their own rope theta (10 000), global
ones over everything with theta 1 000 000 and, from 4B up, linear rope scaling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.layers.embedding import VocabEmbedding
from pagedserve.layers.layernorm import GemmaRMSNorm
from pagedserve.layers.mlp import GatedMLP
from pagedserve.layers.rotary import RotaryEmbedding, StepRotary
from pagedserve.models.llama import AttentionShape, LlamaAttention, LlamaForCausalLM
from pagedserve.models.multimodal import language_model_weights

_SLIDING = "sliding_attention"


def check_gemma3_config(config: Any) -> None:
    """What this implementation does not do, refused by name (released Gemma 3 checkpoints use none of it)."""
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, name, None) is not None:
            raise ValueError(f"Gemma 3 config: {name} (tanh soft-capping) is not supported")
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("Gemma 3 config: use_bidirectional_attention (an encoder) is not supported")
    activation = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if activation != "gelu_pytorch_tanh":
        raise ValueError(
            f"Gemma 3 config: hidden_activation {activation!r} is not supported (gelu_pytorch_tanh)"
        )


def _layer_rope(config: Any, layer_type: str) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) of one kind of layer: transformers 5 keeps one rope_parameters entry per layer type."""
    params = dict((getattr(config, "rope_parameters", None) or {}).get(layer_type) or {})
    default = 10_000.0 if layer_type == _SLIDING else 1_000_000.0
    return float(params.get("rope_theta") or default), params or None


class Gemma3Attention(LlamaAttention):
    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        bias = bool(getattr(config, "attention_bias", False))
        super().__init__(config, backend, AttentionShape(bias, bias), layer_index)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)


class Gemma3DecoderLayer(nn.Module):
    attention_class: type[nn.Module] = Gemma3Attention

    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        super().__init__()
        self.is_sliding = config.layer_types[layer_index] == _SLIDING
        self.self_attn = self.attention_class(config, backend, layer_index)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, gelu_tanh=True)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(self, rope: StepRotary, hidden, residual, kv_cache, metadata):
        """(hidden, residual) -> the same for the next layer: the residual add is fused into the next norm."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(rope, hidden, kv_cache, metadata))
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class Gemma3Model(nn.Module):
    layer_class: type[nn.Module] = Gemma3DecoderLayer

    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__()
        self.check_config(config)
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.embed_scale = config.hidden_size**0.5
        self.layers = nn.ModuleList(
            self.layer_class(config, backend, index) for index in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.local_rotary, self.global_rotary = self.make_rotaries(config)

    @staticmethod
    def check_config(config: Any) -> None:
        check_gemma3_config(config)

    @staticmethod
    def make_rotaries(config: Any) -> tuple[RotaryEmbedding, RotaryEmbedding]:
        """(local layers' table, global layers' table): each kind of layer its own theta and scaling."""
        return (
            RotaryEmbedding(config.head_dim, config.max_position_embeddings, *_layer_rope(config, _SLIDING)),
            RotaryEmbedding(
                config.head_dim, config.max_position_embeddings, *_layer_rope(config, "full_attention")
            ),
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        # Scaled in the activations' dtype, as transformers does (sqrt(1152) is 34.0 in bfloat16).
        return hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)

    def forward(self, input_ids, positions, kv_caches, metadata, inputs_embeds=None) -> torch.Tensor:
        hidden = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        local_rope = self.local_rotary.for_step(positions, hidden.dtype)
        global_rope = (
            local_rope
            if self.global_rotary is self.local_rotary
            else self.global_rotary.for_step(positions, hidden.dtype)
        )
        residual = None
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            rope = local_rope if layer.is_sliding else global_rope
            hidden, residual = layer(rope, hidden, residual, kv_cache, metadata.for_layer(i))
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Gemma3ForCausalLM(LlamaForCausalLM):
    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        return Gemma3Model(config, backend)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled, as the model's own embedding step (vLLM's Gemma does the same)."""
        return self.model.embed(input_ids)


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """Gemma 3 4B/12B/27B served text-only: built from the checkpoint's `text_config` (models/hf_folder.py), the
    vision tower and projector skipped; a request with an image is refused by the chat route."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(language_model_weights(weights))


GEMMA3_MODELS: dict[str, type[LlamaForCausalLM]] = {
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "Gemma3ForConditionalGeneration": Gemma3ForConditionalGeneration,
}
