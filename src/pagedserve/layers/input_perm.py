"""Weights whose input channels are stored in another order than the layer's input (GPTQ act-order checkpoints).

A GPTQ checkpoint quantized with desc_act=True gives each input channel j a group g_idx[j] that does not grow with
j. GGUF blocks need each group's channels side by side, so the loader (models/awq_gptq.py) stores the columns in
the order `perm` (a stable sort of g_idx) and the layer multiplies x[..., perm] by them: x @ W^T equals
x[..., perm] @ W[:, perm]^T. Every part of a merged layer (q|k|v, gate|up) multiplies the same x, so all parts
must come with the same permutation; they do in real checkpoints (one input, one Hessian), and anything else is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagedserve.layers.gguf_quant import QuantizedTensor


@dataclass
class PermutedWeight:
    """A weight stored with its columns (input channels) in the order `perm`: column k is input channel perm[k]."""

    weight: QuantizedTensor
    perm: torch.Tensor
    """int64 [cols], a permutation of range(cols)."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape


def take_input_perm(layer: nn.Module, loaded: Any, shard_id: str | None) -> Any:
    """Records the input permutation a weight part comes with in the layer's `input_perm` buffer (None: input
    order) and returns the weight without it; ValueError if parts of one layer disagree."""
    perm = loaded.perm if isinstance(loaded, PermutedWeight) else None
    if not getattr(layer, "_input_perm_taken", False):
        layer._input_perm_taken = True
        if perm is not None:
            layer.input_perm = perm.to(device=layer.weight.device, dtype=torch.int64)
    else:
        current = layer.input_perm
        same = (perm is None and current is None) or (
            perm is not None and current is not None and torch.equal(perm.to(current.device), current)
        )
        if not same:
            rows, cols = layer.output_size, layer.input_size
            raise ValueError(
                f"the parts of one merged layer ({rows}x{cols}, part {shard_id}) order their input channels "
                "differently (GPTQ g_idx); the engine multiplies them as one matrix of one input"
            )
    return loaded.weight if isinstance(loaded, PermutedWeight) else loaded


def permute_input(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """x's last dimension in the order the layer's columns are stored in."""
    return x if perm is None else x.index_select(-1, perm)
