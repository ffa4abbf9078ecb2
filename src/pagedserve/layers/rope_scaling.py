"""The rotary frequencies under a config's scaling dict (transformers' rope_parameters): default, linear, llama3,
LongRoPE (Phi-3.5 / Phi-4-mini) and YaRN (Qwen2.5 / Qwen3 past 32k), each as transformers computes them, plus the
factor cos and sin are multiplied by (LongRoPE's and YaRN's attention factor)."""

from __future__ import annotations

import math
from typing import Any

import torch

USE_LONG_FACTOR = "use_long_factor"
"""Key of a LongRoPE parameter dict resolved for serving (`resolve_rope`): True to rotate by `long_factor`."""
RESOLVED = "resolved_for_serving"
"""Key `resolve_rope` sets: the dict's context and factors are the checkpoint's, whatever the table size."""

SUPPORTED = ("default", "linear", "llama3", "longrope", "yarn")


def rope_type(scaling: dict[str, Any] | None) -> str:
    return str((scaling or {}).get("rope_type", (scaling or {}).get("type")) or "default")


def scaled_inv_freq(
    rotary_dim: int, base: float, scaling: dict[str, Any] | None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [rotary_dim / 2], factor applied to cos and sin)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    kind = rope_type(scaling)
    if kind == "default" or scaling is None:
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    if kind == "longrope":
        return _longrope(inv_freq, scaling)
    if kind == "yarn":
        return _yarn(inv_freq, rotary_dim, base, scaling)
    raise ValueError(f"rope_scaling type {kind!r} is not supported ({', '.join(SUPPORTED)})")


def _llama3(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
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


def _longrope(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Phi-3's LongRoPE: each frequency divided by its own factor, the long set or the short one, and cos and sin
    multiplied by sqrt(1 + ln(factor) / ln(original positions)) (transformers' attention factor; short_mscale /
    long_mscale or attention_factor when the config gives them)."""
    if USE_LONG_FACTOR not in scaling:
        raise ValueError("LongRoPE parameters must be resolved for serving first (resolve_rope)")
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


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(
    inv_freq: torch.Tensor, rotary_dim: int, base: float, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """YaRN: frequencies that turn more than beta_fast times over the original context keep their value, those
    turning fewer than beta_slow times are divided by `factor`, a linear ramp between; cos and sin are multiplied by
    0.1 ln(factor) + 1. Static, as in transformers and vLLM: the same for every length."""
    factor = scaling.get("factor")
    if factor is None:
        raise ValueError("rope_scaling: yarn needs factor")
    factor = float(factor)
    original = float(scaling["original_max_position_embeddings"])
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = float(scaling.get("beta_fast") or 32)
    beta_slow = float(scaling.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:  # the dimension whose frequency turns `rotations` times
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the frequency as trained (extrapolated), 0: divided by factor (interpolated)
    return inv_freq / factor * (1 - keep) + inv_freq * keep, float(attention_factor)


def resolve_rope(
    scaling: dict[str, Any], checkpoint_max_positions: int, max_model_len: int
) -> dict[str, Any]:
    """A LongRoPE or YaRN dict fixed for serving, before the runner resizes the rotary tables: the original context
    (default: the checkpoint's max_position_embeddings) and `factor` (default: the checkpoint's context over the
    original, transformers' rule) taken from the checkpoint; for LongRoPE, the long factors for every position when
    max_model_len is past the original context and the short ones otherwise (vLLM's rule: one set for a sequence's
    whole life, so its cached keys never go stale when it crosses the original length)."""
    resolved = dict(scaling)
    original = int(resolved.setdefault("original_max_position_embeddings", checkpoint_max_positions))
    if resolved.get("factor") is None:
        resolved["factor"] = checkpoint_max_positions / original
    if rope_type(resolved) == "longrope":
        resolved[USE_LONG_FACTOR] = max_model_len > original
    resolved[RESOLVED] = True
    return resolved


def needs_resolving(scaling: dict[str, Any] | None) -> bool:
    """Whether `resolve_rope` must fix the dict before the tables are built (LongRoPE, YaRN, not done yet)."""
    return rope_type(scaling) in ("longrope", "yarn") and not (scaling or {}).get(RESOLVED)


def scaled_context(scaling: dict[str, Any] | None, max_positions: int) -> int:
    """The context a scaling extends the model to, as vLLM derives max_model_len: YaRN's original context times
    its factor, linear's max_position_embeddings times its factor; other types (llama3, LongRoPE) already give
    theirs in max_position_embeddings."""
    kind = rope_type(scaling)
    if scaling is None or scaling.get("factor") is None:
        return max_positions
    if kind == "yarn":
        original = int(scaling.get("original_max_position_embeddings") or max_positions)
        return max(max_positions, int(original * float(scaling["factor"])))
    if kind == "linear":
        return int(max_positions * float(scaling["factor"]))
    return max_positions
