"""Q4_K and Q6_K blocks written by round-to-nearest in numpy, for tests: the installed `gguf` package dequantizes
the K-quants but cannot quantize them (NotImplementedError), and llama.cpp's quantizer is C.

Layout written, from ggml's block_q4_K / block_q6_K (ggml-common.h) and checked by the gguf package's own
dequantizer in the tests (its output is the reference values):
  Q4_K, 144 bytes per 256 weights: float16 d, float16 dmin, 12 bytes holding eight 6-bit scales sc and mins mn
    (j < 4: sc in bytes 0-3 and mn in bytes 4-7, low 6 bits; j >= 4: low nibbles in bytes 8-11 (sc) and their high
    nibbles (mn), top two bits in the top bits of bytes j - 4 (sc) and j (mn)), then 128 bytes of nibbles: byte
    32 c + l holds weight 64 c + l (low nibble) and 64 c + 32 + l (high). weight = d sc q - dmin mn.
  Q6_K, 210 bytes per 256 weights: ql[128], qh[64], int8 scales[16], float16 d. Weights 128 h + 32 g + l (h < 2,
    g < 4, l < 32): 6-bit u = q + 32 split as low nibble in ql[64 h + 32 (g & 1) + l] (high nibble of that byte
    when g >= 2) and two high bits at bits 2 g of qh[32 h + l]; scale scales[16-weight sub-block]. weight = d sc q.
Quantization is plain min/max round-to-nearest (llama.cpp adds an error search; the layout is what matters here).
"""

from __future__ import annotations

import numpy as np


def _f16(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float16)


def quantize_q4_k(weights: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> uint8 [rows, cols / 256 * 144]."""
    rows, cols = weights.shape
    x = weights.reshape(rows, cols // 256, 8, 32).astype(np.float32)
    low = np.minimum(x.min(-1), 0.0)
    high = x.max(-1)
    scale = (high - low) / 15.0  # per sub-block
    minimum = -low
    d = _f16(scale.max(-1) / 63.0)
    dmin = _f16(minimum.max(-1) / 63.0)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[..., None] > 0, np.rint(scale / d32[..., None]), 0).clip(0, 63).astype(np.uint8)
        mn = (
            np.where(dmin32[..., None] > 0, np.rint(minimum / dmin32[..., None]), 0)
            .clip(0, 63)
            .astype(np.uint8)
        )
        step = d32[..., None] * sc  # [rows, supers, 8]
        offset = dmin32[..., None] * mn
        q = np.where(step[..., None] > 0, np.rint((x + offset[..., None]) / step[..., None]), 0)
    q = q.clip(0, 15).astype(np.uint8)
    packed = np.zeros((rows, cols // 256, 12), dtype=np.uint8)
    packed[..., 0:4] = sc[..., 0:4] | ((sc[..., 4:8] >> 4) << 6)
    packed[..., 4:8] = mn[..., 0:4] | ((mn[..., 4:8] >> 4) << 6)
    packed[..., 8:12] = (sc[..., 4:8] & 15) | ((mn[..., 4:8] & 15) << 4)
    pairs = q.reshape(rows, cols // 256, 4, 2, 32)
    qs = (pairs[..., 0, :] | (pairs[..., 1, :] << 4)).reshape(rows, cols // 256, 128)
    out = np.concatenate((d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed, qs), axis=-1)
    return np.ascontiguousarray(out.reshape(rows, -1))


def quantize_q6_k(weights: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (cols a multiple of 256) -> uint8 [rows, cols / 256 * 210]."""
    rows, cols = weights.shape
    x = weights.reshape(rows, cols // 256, 16, 16).astype(np.float32)
    scale = np.abs(x).max(-1) / 31.0  # per 16 weights
    d = _f16(scale.max(-1) / 127.0)
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32[..., None] > 0, np.rint(scale / d32[..., None]), 0).clip(-128, 127).astype(np.int8)
        step = d32[..., None] * sc
        q = np.where(step[..., None] != 0, np.rint(x / step[..., None]), 0)
    u = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(rows, cols // 256, 2, 4, 32)  # [half, g, l]
    ql = np.concatenate(
        (
            (u[:, :, :, 0] & 15) | ((u[:, :, :, 2] & 15) << 4),
            (u[:, :, :, 1] & 15) | ((u[:, :, :, 3] & 15) << 4),
        ),
        axis=-1,
    )  # [rows, supers, half, 64]
    qh = (
        (u[:, :, :, 0] >> 4)
        | ((u[:, :, :, 1] >> 4) << 2)
        | ((u[:, :, :, 2] >> 4) << 4)
        | ((u[:, :, :, 3] >> 4) << 6)
    )
    out = np.concatenate(
        (
            ql.reshape(rows, cols // 256, 128),
            qh.reshape(rows, cols // 256, 64),
            sc.view(np.uint8),
            d[..., None].view(np.uint8),
        ),
        axis=-1,
    )
    return np.ascontiguousarray(out.reshape(rows, -1))
