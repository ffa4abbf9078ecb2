"""Cohere's Command R family: `CohereForCausalLM` (Command R 35B, Aya Expanse 8B / 32B, Aya 23) and
`Cohere2ForCausalLM` (Command R7B, Command A). Each layer runs attention and the MLP side by side on one LayerNorm
(mean-centred, no bias, in float32) and adds both to the residual stream; the logits are multiplied by
`logit_scale`; rotary pairs are interleaved, as GLM's, and reordered at load (models/interleaved_rope.py). Cohere2
gives three layers of four a sliding window (4096) with rotary positions and the fourth global attention with none
(NoPE), so its window layers hold a window's blocks (kv_memory.kv_cache_groups).

Command R+'s per-head q/k LayerNorms (`use_qk_norm`) are refused by name, as are LoRA adapters (the q/k rows are
reordered). LayerNorm is a PyTorch operation, so decode steps run eager.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.layers.embedding import VocabEmbedding
from pagedserve.layers.rotary import StepRotary
from pagedserve.models.interleaved_rope import reorder_rotary_rows
from pagedserve.models.llama import AttentionShape, LlamaAttention, LlamaForCausalLM, LlamaMLP, make_rotary


class CohereLayerNorm(nn.Module):
    """LayerNorm without a bias, computed in float32 as Cohere's checkpoints were trained."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.weight.shape, self.weight.float(), None, self.eps)
        return out.to(x.dtype)


class CohereDecoderLayer(nn.Module):
    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        super().__init__()
        bias = bool(getattr(config, "attention_bias", False))
        self.self_attn = LlamaAttention(config, backend, AttentionShape(bias, bias), layer_index)
        layer_types = getattr(config, "layer_types", None)
        # Cohere2: the global layers attend without rotary positions.
        self.self_attn.use_rope = layer_types is None or layer_types[layer_index] == "sliding_attention"
        self.mlp = LlamaMLP(config)
        self.input_layernorm = CohereLayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, rope: StepRotary, hidden, kv_cache, metadata) -> torch.Tensor:
        normed = self.input_layernorm(hidden)
        return hidden + self.self_attn(rope, normed, kv_cache, metadata) + self.mlp(normed)


class CohereModel(nn.Module):
    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            CohereDecoderLayer(config, backend, index) for index in range(config.num_hidden_layers)
        )
        self.norm = CohereLayerNorm(config.hidden_size, config.layer_norm_eps)
        self.rotary = make_rotary(config, head_dim(config))

    def forward(self, input_ids, positions, kv_caches, metadata, inputs_embeds=None) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary.for_step(positions, hidden.dtype)
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            hidden = layer(rope, hidden, kv_cache, metadata.for_layer(i))
        return self.norm(hidden)


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class CohereForCausalLM(LlamaForCausalLM):
    supports_lora = False
    """LoRA adapters' q/k deltas would need the rows reordered as the weights are (refused by name)."""

    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        if getattr(config, "use_qk_norm", False):
            raise ValueError(
                f"{config.architectures[0]} with use_qk_norm (Command R+'s per-head q/k LayerNorms) is not supported"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"Cohere config: hidden_act {config.hidden_act!r} is not supported (silu)")
        self.logit_scale = float(getattr(config, "logit_scale", 1.0))
        return CohereModel(config, backend)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().compute_logits(hidden) * self.logit_scale

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        return super().gather_logits(local_logits) * self.logit_scale

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        size = head_dim(self.config)
        return super().load_weights(reorder_rotary_rows(weights, size, self.model.rotary.rotary_dim))


COHERE_MODELS: dict[str, type[nn.Module]] = {
    "CohereForCausalLM": CohereForCausalLM,
    "Cohere2ForCausalLM": CohereForCausalLM,
}
