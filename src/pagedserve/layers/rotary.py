"""Rotary position embedding (Hugging Face "rotate half" layout) with default, linear and llama3 scaling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedserve.ops import cpu as cpu_ops


def _inv_freq(head_dim: int, base: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {rope_type!r} is not supported (default, linear, llama3)")


class RotaryEmbedding(nn.Module):
    def __init__(
        self, head_dim: int, max_position: int, base: float, scaling: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = _inv_freq(head_dim, base, scaling)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

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
    """x: [T, H, D] (q and k heads may be stacked along H); cos, sin: [T, 1, D]."""
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
