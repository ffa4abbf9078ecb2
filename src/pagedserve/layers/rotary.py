"""Rotary position embedding (Hugging Face "rotate half" layout) with default, linear, llama3 and LongRoPE scaling,
over the whole head or its first `rotary_dim` values (partial rotary)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedserve.ops import cpu as cpu_ops

USE_LONG_FACTOR = "use_long_factor"
"""Key of a LongRoPE parameter dict resolved for serving (`resolve_longrope`): True to rotate by `long_factor`."""


def _scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any] | None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, factor applied to cos and sin) under a scaling dict."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if not scaling or rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
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
        return torch.where(medium, smoothed, scaled), 1.0
    if rope_type == "longrope":
        return _longrope(inv_freq, scaling)
    raise ValueError(f"rope_scaling type {rope_type!r} is not supported (default, linear, llama3, longrope)")


def _longrope(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Phi-3's LongRoPE: each frequency divided by its own factor, the long set or the short one, and cos and sin
    multiplied by sqrt(1 + ln(factor) / ln(original positions)) (transformers' attention factor; short_mscale /
    long_mscale or attention_factor when the config gives them)."""
    if USE_LONG_FACTOR not in scaling:
        raise ValueError("LongRoPE parameters must be resolved for serving first (resolve_longrope)")
    use_long = bool(scaling[USE_LONG_FACTOR])
    factors = scaling["long_factor" if use_long else "short_factor"]
    if len(factors) != inv_freq.numel():
        raise ValueError(
            f"rope_scaling: {len(factors)} LongRoPE factors for {inv_freq.numel()} rotary frequencies "
            "(rotary dims / 2)"
        )
    mscale = scaling.get("long_mscale" if use_long else "short_mscale") or scaling.get("attention_factor")
    if mscale is None:
        factor, original = float(scaling["factor"]), float(scaling["original_max_position_embeddings"])
        mscale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return inv_freq / torch.tensor(factors, dtype=torch.float32), float(mscale)


def resolve_longrope(
    scaling: dict[str, Any], checkpoint_max_positions: int, max_model_len: int
) -> dict[str, Any]:
    """LongRoPE parameters fixed for serving: the long factors for every position when max_model_len is past the
    original context, the short ones otherwise (vLLM's rule: one set for a sequence's whole life, so its cached
    keys never go stale when it crosses the original length), and `factor` taken from the checkpoint's context
    (max_position_embeddings / original, transformers' default) before the runner resizes the tables."""
    original = int(scaling["original_max_position_embeddings"])
    resolved = dict(scaling)
    resolved.setdefault("factor", checkpoint_max_positions / original)
    resolved[USE_LONG_FACTOR] = max_model_len > original
    return resolved


def is_longrope(scaling: dict[str, Any] | None) -> bool:
    return bool(scaling) and scaling.get("rope_type", scaling.get("type")) == "longrope"


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
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).float() / self.rotary_dim
        inv_freq, mscale = _scaled_inv_freq(1.0 / (base**exponents), scaling)
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        # cos and sin: [max_position, rotary_dim] float32, LongRoPE's factor included (transformers multiplies in
        # float32 before casting).
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
