"""Recover Llama 3 rope scaling parameters from the `rope_freqs` tensor of a GGUF file.

llama.cpp's converter does not write Llama 3.x's `rope_scaling` block as metadata; it precomputes one divisor
per rotary frequency (1 for short wavelengths, `factor` for long ones, a smooth blend in between) and stores
those. transformers wants the parameters, so they are read back off the divisors and checked by recomputing.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np

# Meta's published values for Llama 3.1 / 3.2 / 3.3; any other set is fitted from the blended divisors.
_LLAMA3_ORIGINAL_CONTEXT = 8192
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0


def llama3_freq_factors(
    wavelengths: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float, original: float
) -> np.ndarray:
    """Per-frequency divisors as Llama 3's rope scaling defines them."""
    low_freq_wavelength = original / low_freq_factor
    high_freq_wavelength = original / high_freq_factor
    smooth = (original / wavelengths - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    return np.where(
        wavelengths < high_freq_wavelength, 1.0, np.where(wavelengths > low_freq_wavelength, factor, blended)
    )


def llama3_rope_from_freq_factors(
    factors: np.ndarray, rope_theta: float, head_dim: int, original: int | None, path: pathlib.Path
) -> dict[str, Any] | None:
    """The `rope_scaling` dict that reproduces `factors`, or None when every divisor is 1 (no scaling)."""
    if factors.shape != (head_dim // 2,):
        raise ValueError(f"GGUF file {path}: rope_freqs has {factors.size} values, expected {head_dim // 2}")
    factor = float(factors.max())
    if math.isclose(factor, 1.0) and math.isclose(float(factors.min()), 1.0):
        return None
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelengths = 2 * math.pi / inv_freq
    original_context = float(original or _LLAMA3_ORIGINAL_CONTEXT)

    low, high = _LLAMA3_LOW_FREQ_FACTOR, _LLAMA3_HIGH_FREQ_FACTOR
    expected = llama3_freq_factors(wavelengths, factor, low, high, original_context)
    if not np.allclose(expected, factors, rtol=1e-4):
        low, high = _fit_blend(factors, factor, wavelengths, original_context, path)
        expected = llama3_freq_factors(wavelengths, factor, low, high, original_context)
        if not np.allclose(expected, factors, rtol=1e-4):
            raise ValueError(f"GGUF file {path}: rope_freqs does not follow Llama 3 rope scaling")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": int(original_context),
    }


def _fit_blend(
    factors: np.ndarray, factor: float, wavelengths: np.ndarray, original: float, path: pathlib.Path
) -> tuple[float, float]:
    """Solve low/high_freq_factor from the blended divisors: the blend weight is linear in 1/wavelength."""
    blended = (factors > 1.0 + 1e-6) & (factors < factor - 1e-6)
    if int(blended.sum()) < 2:
        raise ValueError(f"GGUF file {path}: cannot recover Llama 3 rope scaling from rope_freqs")
    weight = (1.0 / factors[blended] - 1.0 / factor) / (1.0 - 1.0 / factor)
    slope, intercept = np.polyfit(1.0 / wavelengths[blended], weight, 1)
    # weight = (original / wavelength - low) / (high - low)  →  slope = original / (high - low), intercept = -low / (high - low)
    low = -intercept * original / slope
    return float(low), float(low + original / slope)
