"""Gated activations on a merged gate|up projection, SwiGLU and Gemma's GELU (tanh approximation): one C call each
on the CPU when the kernels are built."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.ops import cpu as cpu_ops


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.is_contiguous() and cpu_ops.available(x):
            return cpu_ops.silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluTanhAndMul(nn.Module):
    """Gemma's gate: gelu(gate, tanh approximation) * up (transformers' gelu_pytorch_tanh)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.is_contiguous() and cpu_ops.available(x):
            return cpu_ops.gelu_tanh_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up
