"""OLMo 2 (`Olmo2ForCausalLM`, AI2's fully open 1B-32B): the Llama projections and MLP with the norms moved:
RMSNorm over the whole q and k projections (all heads at once) before the rotation, and each block's output normed
before it joins the residual stream (no norm in front of the blocks). Tensor parallelism is refused by name: the
q/k norms span every head, so ranks holding a slice of the heads would have to share their sums of squares.

The blocks' norms and the q/k concatenation are PyTorch operations, so decode steps run eager.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.distributed import parallel_state
from pagedserve.layers.embedding import VocabEmbedding
from pagedserve.layers.layernorm import RMSNorm
from pagedserve.layers.rotary import StepRotary
from pagedserve.models.llama import AttentionShape, LlamaAttention, LlamaForCausalLM, LlamaMLP, make_rotary

TENSOR_PARALLEL_REFUSAL = "its q/k norms span every attention head"


class Olmo2Attention(LlamaAttention):
    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        bias = bool(getattr(config, "attention_bias", False))
        super().__init__(config, backend, AttentionShape(bias, bias), layer_index)
        self.q_norm = RMSNorm(self.q_size, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.kv_size, config.rms_norm_eps)

    def q_k_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """Whole q and k projections normed (every head at once), then split into heads."""
        q = self.q_norm(qkv[:, : self.q_size].contiguous())
        k = self.k_norm(qkv[:, self.q_size : self.q_size + self.kv_size].contiguous())
        return torch.cat((q, k), dim=1).view(qkv.shape[0], self.num_heads + self.num_kv_heads, self.head_dim)


class Olmo2DecoderLayer(nn.Module):
    def __init__(self, config: Any, backend: AttentionBackend, layer_index: int) -> None:
        super().__init__()
        self.self_attn = Olmo2Attention(config, backend, layer_index)
        self.mlp = LlamaMLP(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, rope: StepRotary, hidden, kv_cache, metadata) -> torch.Tensor:
        hidden = hidden + self.post_attention_layernorm(self.self_attn(rope, hidden, kv_cache, metadata))
        return hidden + self.post_feedforward_layernorm(self.mlp(hidden))


class Olmo2Model(nn.Module):
    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__()
        if parallel_state.get_tp().size > 1:
            raise ValueError(f"Olmo2ForCausalLM runs without tensor parallelism: {TENSOR_PARALLEL_REFUSAL}")
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Olmo2DecoderLayer(config, backend, index) for index in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.rotary = make_rotary(config, head_dim)

    def forward(self, input_ids, positions, kv_caches, metadata, inputs_embeds=None) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary.for_step(positions, hidden.dtype)
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            hidden = layer(rope, hidden, kv_cache, metadata.for_layer(i))
        return self.norm(hidden)


class Olmo2ForCausalLM(LlamaForCausalLM):
    tensor_parallel_refusal = TENSOR_PARALLEL_REFUSAL
    """Why the engine refuses --tensor-parallel-size > 1 before starting any rank (engine/core.py)."""

    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        return Olmo2Model(config, backend)
