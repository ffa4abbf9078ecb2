"""Rotary position embedding (Hugging Face "rotate half" layout) over the whole head or its first `rotary_dim`
values (partial rotary); the frequencies' scaling (linear, llama3, LongRoPE, YaRN) is layers/rope_scaling.py's."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.layers.rope_scaling import scaled_inv_freq
from pagedserve.ops import cpu as cpu_ops


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
        rotary_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        if self.rotary_dim % 2 or self.rotary_dim > head_dim:
            raise ValueError(f"rotary dims {self.rotary_dim}: must be even and at most head_dim {head_dim}")
        inv_freq, mscale = scaled_inv_freq(self.rotary_dim, base, scaling)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        # cos and sin: [max_position, rotary_dim] float32, LongRoPE's / YaRN's factor included (transformers
        # multiplies in float32 before casting).
        self.register_buffer("cos_cache", emb.cos() * mscale, persistent=False)
        self.register_buffer("sin_cache", emb.sin() * mscale, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, 1, D] cos and sin for a step's positions: computed once per step, shared by every layer."""
        return (
            self.cos_cache[positions].unsqueeze(1).to(dtype),
            self.sin_cache[positions].unsqueeze(1).to(dtype),
        )

    def for_step(self, positions: torch.Tensor, dtype: torch.dtype) -> StepRotary:
        """What every layer of one step needs to rotate its q and k: computed once per step."""
        return StepRotary(self, positions, dtype)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq, D], k: [T, Hkv, D], positions: [T]."""
        cos, sin = self.cos_sin(positions, q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D] (q and k heads may be stacked along H); cos, sin: [T, 1, R], R <= D: the first R values of
    each head are rotated, the rest pass (partial rotary)."""
    rot_dim = cos.shape[-1]
    if rot_dim < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rot_dim], cos, sin), x[..., rot_dim:]), dim=-1)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class StepRotary:
    """The rotary embedding at one step's positions. On the CPU with the C kernels built, `rotate` works in place
    on the caller's view (no cos/sin gather, no temporaries); otherwise it gathers cos/sin once for all layers."""

    def __init__(self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype) -> None:
        self.use_kernel = (
            positions.dtype == torch.int64 and cpu_ops.supports(dtype) and cpu_ops.available(rotary.cos_cache)
        )
        if self.use_kernel:
            self.positions = positions.contiguous()
            self.cos, self.sin = rotary.cos_cache, rotary.sin_cache
        else:
            self.cos, self.sin = rotary.cos_sin(positions, dtype)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D] in the step's dtype -> rotated; may rotate `x` itself in place and return it."""
        if not self.use_kernel:
            return apply_rotary(x, self.cos, self.sin)
        x = x if cpu_ops.usable_rows(x) else x.contiguous()
        cpu_ops.rotary_neox_(x, self.positions, self.cos, self.sin)
        return x
