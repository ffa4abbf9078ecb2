"""GLM-4 (`GlmForCausalLM`: glm-4-9b-chat-hf; `Glm4ForCausalLM`: the GLM-4-0414 family, 9B and 32B): the Llama
decoder with q/k/v biases, gate|up stored fused (split at load as Phi-3's), rotary on the first half of each head
with its pairs interleaved ((0, 1), (2, 3), ...), and on GLM-4-0414 a norm after each block as well as before.

The interleaved pairs become Llama's split halves by reordering the q and k projections' rows at load (within each
head's rotary part: even dims, then odd ones). q and k get the same order, so every dot product, and so attention,
is unchanged, and the rotary kernels, the CPU decode graphs and tensor parallelism (whole heads a rank) serve it as
they serve Llama. GGUF `glm4` files (llama.cpp keeps the checkpoint's order and rotates adjacent pairs) reorder their
rows of blocks the same way. What the reordering cannot follow is refused by name: quantized Hugging Face
checkpoints (rows packed or scaled in groups) and LoRA adapters (their q/k deltas would need the same order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.layers.layernorm import RMSNorm
from pagedserve.layers.rotary import StepRotary
from pagedserve.models.interleaved_rope import reorder_rotary_rows
from pagedserve.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel, rotary_dims
from pagedserve.models.phi3 import split_fused


class Glm4DecoderLayer(LlamaDecoderLayer):
    """Llama's layer with each block's output normed before it joins the residual stream."""

    def __init__(self, config: Any, *args: Any) -> None:
        super().__init__(config, *args)
        self.post_self_attn_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_mlp_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, rope: StepRotary, hidden, residual, kv_cache, metadata):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.post_self_attn_layernorm(self.self_attn(rope, hidden, kv_cache, metadata))
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.post_mlp_layernorm(self.mlp(hidden)), residual


class Glm4Model(LlamaModel):
    layer_class = Glm4DecoderLayer


class GlmForCausalLM(LlamaForCausalLM):
    model_class: type[LlamaModel] = LlamaModel
    supports_lora = False
    """LoRA adapters' q/k deltas would need the rows reordered as the weights are (refused by name)."""

    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"GLM config: hidden_act {config.hidden_act!r} is not supported (silu)")
        return self.model_class(config, backend, self.attention_shape(config), self.make_mlp)

    @staticmethod
    def attention_shape(config: Any) -> Any:
        shape = LlamaForCausalLM.attention_shape(config)
        return shape._replace(o_bias=False)  # GLM's biases are on q, k and v only

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        config = self.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rotary_dim = rotary_dims(config, head_dim)
        return super().load_weights(reorder_rotary_rows(split_fused(weights, config), head_dim, rotary_dim))


class Glm4ForCausalLM(GlmForCausalLM):
    model_class = Glm4Model


GLM_MODELS: dict[str, type[nn.Module]] = {
    "GlmForCausalLM": GlmForCausalLM,
    "Glm4ForCausalLM": Glm4ForCausalLM,
}
