"""Phi-3 and Phi-4 (`Phi3ForCausalLM`): the Llama decoder with q|k|v and gate|up stored fused in the checkpoint
(`qkv_proj`, `gate_up_proj`) and, on the 4k-context Phi-3 models, a sliding window on every layer. The fused
tensors are split into their parts at load, so tensor parallelism shards them as it shards Llama's.

GGUF `phi3` files (llama.cpp keeps the same fusion: attn_qkv, ffn_up) split their rows of blocks the same way.
Phi-3.5 and the 128k-context variants (LongRoPE) and Phi-4-mini (LongRoPE, rotary on 3/4 of each head) take their
rotary table from models/llama.py::make_rotary. Quantized Hugging Face checkpoints (scales laid out over the fused
rows) are refused by name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from pagedserve.attention.backend import AttentionBackend
from pagedserve.layers.gguf_quant import QuantizedTensor
from pagedserve.models.llama import LlamaForCausalLM


def check_phi3_config(config: Any) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"Phi-3 config: hidden_act {config.hidden_act!r} is not supported (silu)")


class Phi3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        check_phi3_config(config)
        super().__init__(config, backend)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(split_fused(weights, self.config))


def split_fused(
    weights: Iterable[tuple[str, torch.Tensor]], config: Any
) -> Iterator[tuple[str, torch.Tensor]]:
    """Fused q|k|v (`qkv_proj`) and gate|up (`gate_up_proj`) checkpoint tensors as their parts (GLM fuses gate|up
    too: models/glm.py)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_size = config.num_attention_heads * head_dim
    kv_size = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    for name, tensor in weights:
        if ".self_attn.qkv_proj." not in name and ".mlp.gate_up_proj." not in name:
            yield name, tensor
            continue
        if isinstance(tensor, QuantizedTensor):  # GGUF blocks: each row quantized alone, so rows split
            sizes = [q_size, kv_size, kv_size] if ".qkv_proj." in name else [tensor.shape[0] // 2] * 2
            starts = [0, *itertools.accumulate(sizes)]
            pieces: list[Any] = [
                QuantizedTensor(tensor.data[start : start + size], tensor.qtype, (size, tensor.shape[1]))
                for start, size in zip(starts, sizes)
            ]
        elif name.endswith(".weight") and isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            pieces = (
                list(tensor.split([q_size, kv_size, kv_size]))
                if ".qkv_proj." in name
                else list(tensor.chunk(2))
            )
        else:  # AWQ/GPTQ/FP8 scales of a fused layer are laid out per block of rows, not per part
            raise ValueError(
                f"{name}: quantized checkpoints with fused q|k|v or gate|up rows (Phi-3, GLM) are not supported"
            )
        fused, parts = (
            ("qkv_proj", ("q_proj", "k_proj", "v_proj"))
            if ".qkv_proj." in name
            else ("gate_up_proj", ("gate_proj", "up_proj"))
        )
        for part, values in zip(parts, pieces):
            yield name.replace(f".{fused}.", f".{part}."), values
