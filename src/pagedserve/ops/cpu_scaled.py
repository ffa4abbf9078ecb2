"""PyTorch-facing wrappers of the int8 and float8 weight kernels (csrc/int8_rows.c, csrc/e4m3_rows.c, gemv.c's
gemm_e4m3w) that layers/ct_quant.py multiplies W8A8 and FP8 layers with. Each returns None where the kernels do not
apply (not built, another device or layout), and the caller takes its PyTorch path."""

from __future__ import annotations

import torch

from pagedserve.ops import build
from pagedserve.ops.cpu import DTYPE_CODES

# Levels where torch._int_mm (oneDNN) stays the W8A8 product: measured fast on an AVX-512 BF16 host (VNNI),
# 2026-12-02. Below them it ran 8-50x slower than float32 (csrc/int8_rows.c).
_TORCH_INT8_LEVELS = frozenset({"avx512", "avx512_bf16"})


def int8_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x int8 [m, k] @ w int8 [n, k]^T as int32 [m, n], exact; None where torch._int_mm is the faster product
    (AVX-512 levels) or the kernels are not built."""
    library = build.load()
    if library is None or not (x.is_contiguous() and w.is_contiguous()):
        return None
    if build.ISA_LEVELS[library.compiled_level()] in _TORCH_INT8_LEVELS:
        return None
    (m, k), n = x.shape, w.shape[0]
    acc = torch.empty(m, n, dtype=torch.int32)
    if library.int8_gemm(x.data_ptr(), w.data_ptr(), acc.data_ptr(), m, n, k, torch.get_num_threads()):
        raise MemoryError(f"int8_gemm: no scratch memory for {m} x {k} activations")
    return acc


def int8_quantize(
    x: torch.Tensor, per_tensor: bool, static_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """W8A8's activation quantization of x [m, k] (float32 or bfloat16): int8 [m, k] and float32 scales [m]
    (per_tensor: one scale, repeated; static_scale: that one, a checkpoint's input_scale), bit-identical to
    layers/ct_quant.py's PyTorch path; None where the kernels are not built."""
    library = build.load()
    if library is None or x.dtype not in DTYPE_CODES or x.dim() != 2 or not x.is_contiguous():
        return None
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8)
    scales = torch.empty(m, dtype=torch.float32)
    library.int8_quantize(
        x.data_ptr(), q.data_ptr(), scales.data_ptr(), m, k, int(per_tensor), DTYPE_CODES[x.dtype],
        torch.get_num_threads(), static_scale or 0.0,
    )  # fmt: skip
    return q, scales


def int8_epilogue(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """acc int32 [m, n] * x_scale float32 [m] * w_scale float32 [n] (+ float32 bias) in `dtype` (float32 or
    bfloat16); None where the kernels are not built (the caller scales in PyTorch)."""
    library = build.load()
    tensors = [acc, x_scale, w_scale] + ([bias] if bias is not None else [])
    if library is None or dtype not in DTYPE_CODES or not all(t.is_contiguous() for t in tensors):
        return None
    m, n = acc.shape
    out = torch.empty(m, n, dtype=dtype)
    library.int8_epilogue(
        acc.data_ptr(), x_scale.data_ptr(), w_scale.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), DTYPE_CODES[dtype], m, n, torch.get_num_threads(),
    )  # fmt: skip
    return out


def fp8_quantize(
    x: torch.Tensor, per_tensor: bool, static_scale: float | None = None, group: int = 0
) -> torch.Tensor | None:
    """FP8's activation quantization of x [m, k] (float32 or bfloat16): float32 [m, k] holding the float8 e4m3
    values times their scale (per row, per `group` values of a row, or per_tensor: one; static_scale: that one, a
    checkpoint's input_scale), bit-identical to layers/ct_quant.py's PyTorch path; None where the kernels are not
    built."""
    library = build.load()
    if library is None or x.dtype not in DTYPE_CODES or x.dim() != 2 or not x.is_contiguous():
        return None
    if x.device.type != "cpu":
        return None
    m, k = x.shape
    out = torch.empty(m, k, dtype=torch.float32)
    library.fp8_quantize(
        x.data_ptr(), out.data_ptr(), m, k, group, int(per_tensor), DTYPE_CODES[x.dtype], torch.get_num_threads(),
        static_scale or 0.0,
    )  # fmt: skip
    return out


def gemm_e4m3w(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    block: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """x [m, k] (float32 or bfloat16) @ (w float8_e4m3fn [n, k] * its scales)^T (+ float32 bias), in `dtype`
    (float32 or bfloat16): w_scale float32 [n] (one a row), or with `block` (rows, columns) [ceil(n / rows),
    ceil(k / columns)]; None where the kernels are not built."""
    library = build.load()
    tensors = [x, w, w_scale] + ([bias] if bias is not None else [])
    if library is None or x.dtype not in DTYPE_CODES or dtype not in DTYPE_CODES:
        return None
    if not all(t.is_contiguous() and t.device.type == "cpu" for t in tensors):
        return None
    (m, k), n = x.shape, w.shape[0]
    block_n, block_k = block or (1, k)
    out = torch.empty(m, n, dtype=dtype)
    failed = library.gemm_e4m3w(
        x.data_ptr(), w.data_ptr(), w_scale.data_ptr(), block_n, block_k, None if bias is None else bias.data_ptr(),
        out.data_ptr(), m, n, k, DTYPE_CODES[x.dtype], DTYPE_CODES[dtype], torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError(f"gemm_e4m3w: no scratch memory for {m} x {k} activations")
    return out


def e4m3_dequantize(
    w: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None
) -> torch.Tensor | None:
    """w float8_e4m3fn [n, k] times its scales (gemm_e4m3w's `w_scale` and `block`) as float32 [n, k]; None where the
    kernels are not built."""
    library = build.load()
    if library is None or not all(t.is_contiguous() and t.device.type == "cpu" for t in (w, scale)):
        return None
    n, k = w.shape
    block_n, block_k = block or (1, k)
    out = torch.empty(n, k, dtype=torch.float32)
    library.e4m3_dequantize(
        w.data_ptr(), scale.data_ptr(), block_n, block_k, out.data_ptr(), n, k, torch.get_num_threads()
    )
    return out
