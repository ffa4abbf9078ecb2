"""Gemma 2 (`Gemma2ForCausalLM`: 2B, 9B, 27B): Gemma 3's decoder (models/gemma3.py: four GemmaRMSNorms a layer,
GELU-tanh gate, embeddings scaled by sqrt(hidden_size), attention scaled by query_pre_attn_scalar^-0.5) without
the q/k norms, one rotary table (theta 10 000) for every layer, a sliding window on every other layer (4096 tokens,
`layer_types`), and tanh soft-capping twice: on attention scores (softcap * tanh(score / softcap), 50; in every
attention backend) and on the final logits (30).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend, soft_cap
from pagedserve.layers.rotary import RotaryEmbedding
from pagedserve.models.gemma3 import Gemma3DecoderLayer, Gemma3ForCausalLM, Gemma3Model
from pagedserve.models.llama import AttentionShape, LlamaAttention, make_rotary


def check_gemma2_config(config: Any) -> None:
    activation = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if activation != "gelu_pytorch_tanh":
        raise ValueError(
            f"Gemma 2 config: hidden_activation {activation!r} is not supported (gelu_pytorch_tanh)"
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("Gemma 2 config: use_bidirectional_attention (an encoder) is not supported")


class Gemma2Attention(LlamaAttention):
    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        bias = bool(getattr(config, "attention_bias", False))
        super().__init__(config, backend, AttentionShape(bias, bias), layer_index)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.softcap = getattr(config, "attn_logit_softcapping", None) or None


class Gemma2DecoderLayer(Gemma3DecoderLayer):
    attention_class = Gemma2Attention


class Gemma2Model(Gemma3Model):
    layer_class = Gemma2DecoderLayer

    @staticmethod
    def check_config(config: Any) -> None:
        check_gemma2_config(config)

    @staticmethod
    def make_rotaries(config: Any) -> tuple[RotaryEmbedding, RotaryEmbedding]:
        rotary = make_rotary(config, config.head_dim)  # one table: local and global layers share theta
        return rotary, rotary


class Gemma2ForCausalLM(Gemma3ForCausalLM):
    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        return Gemma2Model(config, backend)

    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__(config, backend)
        self.final_softcap: float | None = getattr(config, "final_logit_softcapping", None) or None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return soft_cap(super().compute_logits(hidden), self.final_softcap)

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        # Capped after the gather, outside a recorded CPU decode graph (its replay records only the LM head).
        return soft_cap(super().gather_logits(local_logits), self.final_softcap)
