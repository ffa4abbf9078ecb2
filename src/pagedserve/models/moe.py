"""Mixture-of-experts members of the Llama family: Mixtral (Mistral's attention, every layer sparse, top-2 of 8),
Qwen2-MoE (Qwen2's attention, a shared expert beside the routed ones) and Qwen3-MoE (Qwen3's attention). Only the
feed-forward block differs from llama.py (layers/moe.py); checkpoints store each expert's matrices apart, as
Hugging Face's hub files do.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedserve.layers.moe import SparseMoeBlock
from pagedserve.models.llama import (
    _STACKED,
    LlamaForCausalLM,
    LlamaMLP,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)


def qwen_layer_is_sparse(config: Any, layer_index: int) -> bool:
    """Qwen2/3-MoE: a layer is sparse unless listed in mlp_only_layers, every decoder_sparse_step-th layer."""
    if layer_index in (getattr(config, "mlp_only_layers", None) or []):
        return False
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return config.num_experts > 0 and (layer_index + 1) % step == 0


def _qwen_mlp(config: Any, layer_index: int) -> nn.Module:
    if not qwen_layer_is_sparse(config, layer_index):
        return LlamaMLP(config)
    return SparseMoeBlock(
        config.hidden_size,
        config.num_experts,
        config.num_experts_per_tok,
        config.moe_intermediate_size,
        renormalize=bool(getattr(config, "norm_topk_prob", False)),
        shared_intermediate_size=getattr(config, "shared_expert_intermediate_size", 0) or 0,
    )


class MixtralForCausalLM(MistralForCausalLM):
    is_moe = True
    renamed_params = {".block_sparse_moe.": ".mlp.", ".w2.": ".down_proj."}
    stacked_params = {**_STACKED, ".w1.": (".gate_up_proj.", "gate"), ".w3.": (".gate_up_proj.", "up")}

    @staticmethod
    def make_mlp(config: Any, layer_index: int) -> nn.Module:
        return SparseMoeBlock(
            config.hidden_size,
            config.num_local_experts,
            config.num_experts_per_tok,
            config.intermediate_size,
            renormalize=True,
        )


class Qwen2MoeForCausalLM(Qwen2ForCausalLM):
    is_moe = True
    make_mlp = staticmethod(_qwen_mlp)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    is_moe = True
    make_mlp = staticmethod(_qwen_mlp)


MOE_MODELS: dict[str, type[LlamaForCausalLM]] = {
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}
