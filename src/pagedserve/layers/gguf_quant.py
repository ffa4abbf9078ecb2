"""GGUF matrices kept in their quantized blocks (Q4_0, Q4_1, Q8_0, and the K-quants Q4_K, Q6_K) and multiplied
without widening the matrix.

The byte layout of each block type is documented in ops/csrc/gguf.h (from ggml's block structs; the tests check
every type against the gguf package's own dequantizer). A matrix [rows, cols] is stored as a uint8 tensor
[rows, cols / 32 * block bytes]: rows stay rows, so merged projections (q|k|v, gate|up) are concatenated rows and
llama.cpp's Q/K row permutation is undone on whole rows. Other GGUF types are dequantized at load (the loader's
choice, gguf_weights.py).

Once loaded, a layer's matrix may be stored with its rows interleaved in groups of four (`interleave_rows`: the
same bytes, block b of rows 4g..4g+3 side by side, csrc/gguf.h): the single-stream GEMV reads four rows at a time,
and one stream a thread keeps the hardware prefetcher ahead where four did not (docs/architecture.md, "GGUF rows
interleaved"). The layer remembers its `weight_interleave`; every function here takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedserve.ops import cpu_gguf

GGUF_BLOCK = 32
# GGML type ids (ggml.h: GGML_TYPE_Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q6_K = 14) -> (weights, bytes) per
# block: 32 weights for the simple types, 256 for the K-quants' super-blocks.
Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 2, 3, 8, 12, 14
KEPT_BLOCKS = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
TYPE_NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}
INTERLEAVE = 4
"""Rows grouped by `interleave_rows`: the four rows the GEMV reads at a time (csrc/gguf_q16.h, GGUF_COLS)."""
INTERLEAVED_TYPES = frozenset({Q4_0, Q4_1, Q4_K, Q6_K})
"""Types a layer regroups after loading: those whose single-row GEMV reads four rows at a time, 1.17-1.27x streamed
on a Zen 3. Every kernel reads every type either way; Q8_0's row-at-a-time GEMV measured 0.85-0.89x interleaved
(benchmarks/gguf_gemv.py, BENCHMARKS.md), so it keeps the file's order."""
L1_ROW_WEIGHTS = 4096
"""K-quant rows longer than this keep the file's order (csrc/gguf_q16.h's Q16_L1_ROW_WEIGHTS, the same number: the
single-row GEMV prefetches such rows into L2). Llama 3.2 1B's ffn_down (2048 x 8192) in a Q4_K_M model on a Zen 4,
2 threads: Q4_K 26.0-26.5 GB/s regrouped against 28.3-28.5 in file order, and four rows at once (the multi-row
GEMV re-reads a regrouped group's lines after 64 KB of activations) 11.7 against 13.4 G weights/s, Q6_K 6.3
against 11.9 (BENCHMARKS.md)."""


@dataclass
class QuantizedTensor:
    """A GGUF matrix as read from the file: `data` uint8 [rows, cols / 32 * block bytes] of GGML type `qtype`."""

    data: torch.Tensor
    qtype: int
    shape: tuple[int, int]
    """(rows, cols) of the dequantized matrix."""

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if self.qtype not in KEPT_BLOCKS:
            raise ValueError(
                f"GGML type {self.qtype} is not kept quantized (only {sorted(TYPE_NAMES.values())})"
            )
        if cols % KEPT_BLOCKS[self.qtype][0] or tuple(self.data.shape) != (rows, row_bytes(self.qtype, cols)):
            raise ValueError(
                f"{TYPE_NAMES[self.qtype]} data {tuple(self.data.shape)} does not hold {self.shape}"
            )

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.data, self.qtype, self.shape[1])


def row_bytes(qtype: int, cols: int) -> int:
    weights, size = KEPT_BLOCKS[qtype]
    return cols // weights * size


def interleave_rows(data: torch.Tensor, qtype: int) -> torch.Tensor:
    """Blocks [rows, row bytes] in file order -> the same bytes with rows interleaved by INTERLEAVE (rows a
    multiple of it): group g holds block 0 of rows 4g..4g+3, then block 1 of them, ... (csrc/gguf.h)."""
    rows, nbytes = data.shape
    block = KEPT_BLOCKS[qtype][1]
    if rows % INTERLEAVE:
        raise ValueError(f"{rows} rows are not a whole number of groups of {INTERLEAVE}")
    grouped = data.reshape(rows // INTERLEAVE, INTERLEAVE, nbytes // block, block)
    return grouped.transpose(1, 2).contiguous().reshape(rows, nbytes)


def interleavable(data: torch.Tensor, qtype: int | None) -> bool:
    """Whether a loaded matrix of blocks should be regrouped: a type in INTERLEAVED_TYPES, the C kernels reading
    it (on the CPU), rows that fill groups and, for the K-quants, rows of at most L1_ROW_WEIGHTS."""
    if qtype not in INTERLEAVED_TYPES or not cpu_gguf.can_gguf(data) or data.shape[0] % INTERLEAVE != 0:
        return False
    weights, nbytes = KEPT_BLOCKS[qtype]
    return weights == GGUF_BLOCK or data.shape[1] // nbytes * weights <= L1_ROW_WEIGHTS


def deinterleave_rows(data: torch.Tensor, qtype: int) -> torch.Tensor:
    """The inverse of `interleave_rows`: rows back in file order."""
    rows, nbytes = data.shape
    block = KEPT_BLOCKS[qtype][1]
    grouped = data.reshape(rows // INTERLEAVE, nbytes // block, INTERLEAVE, block)
    return grouped.transpose(1, 2).contiguous().reshape(rows, nbytes)


def gather_rows(data: torch.Tensor, ids: torch.Tensor, qtype: int, interleave: int = 1) -> torch.Tensor:
    """Rows `ids` (1-D) of blocks [rows, row bytes] whose rows are interleaved by `interleave` (1: the file's order),
    each as one row of the file's layout: [len(ids), row bytes] (an embedding lookup; what `dequantize` reads)."""
    if interleave == 1:
        return data[ids]
    rows, nbytes = data.shape
    block = KEPT_BLOCKS[qtype][1]
    grouped = data.reshape(rows // interleave, nbytes // block, interleave, block)
    return grouped[ids // interleave, :, ids % interleave].reshape(len(ids), nbytes)


def dequantize_reference(data: torch.Tensor, qtype: int, cols: int) -> torch.Tensor:
    """The blocks as float32 [rows, cols], in plain PyTorch (the path without C kernels, and the tests' reference)."""
    rows = data.shape[0]
    if qtype in (Q4_K, Q6_K):
        return _dequantize_k_reference(data, qtype, cols)
    blocks = data.reshape(rows, cols // GGUF_BLOCK, KEPT_BLOCKS[qtype][1])
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()  # [rows, blocks, 1]
    if qtype == 8:
        values = d * blocks[..., 2:].contiguous().view(torch.int8).float()
    else:
        packed = blocks[..., 4:] if qtype == 3 else blocks[..., 2:]
        nibbles = torch.cat((packed & 15, packed >> 4), dim=-1).float()  # weights 0-15 low, 16-31 high
        if qtype == 3:
            values = d * nibbles + blocks[..., 2:4].contiguous().view(torch.float16).float()
        else:
            values = d * (nibbles - 8)
    return values.reshape(rows, cols)


def _dequantize_k_reference(data: torch.Tensor, qtype: int, cols: int) -> torch.Tensor:
    """Q4_K / Q6_K super-blocks as float32 (layout in ops/csrc/gguf.h), one [rows, supers, 8, 32] pass."""
    rows = data.shape[0]
    supers = data.reshape(rows, cols // 256, KEPT_BLOCKS[qtype][1]).to(torch.int32)
    if qtype == Q4_K:
        d = _halves(data, rows, cols, 0)
        dmin = _halves(data, rows, cols, 2)
        packed = supers[..., 4:16]
        low, high = packed[..., 0:4], packed[..., 4:8]
        sc = torch.cat((low & 63, (packed[..., 8:12] & 15) | ((low >> 6) << 4)), dim=-1)  # [rows, supers, 8]
        mn = torch.cat((high & 63, (packed[..., 8:12] >> 4) | ((high >> 6) << 4)), dim=-1)
        qs = supers[..., 16:].reshape(rows, -1, 4, 32)
        q = (
            torch.stack((qs & 15, qs >> 4), dim=3).reshape(rows, -1, 8, 32).float()
        )  # sub-block 2c: low nibbles
        values = (d[..., None] * sc.float())[..., None] * q - (dmin[..., None] * mn.float())[..., None]
    else:
        d = _halves(data, rows, cols, 208)
        ql = supers[..., 0:128].reshape(rows, -1, 2, 2, 32)  # [half, g & 1, l]
        qh = supers[..., 128:192].reshape(rows, -1, 2, 1, 32)
        scales = supers[..., 192:208].to(torch.uint8).view(torch.int8).float().reshape(rows, -1, 2, 4, 2, 1)
        low = torch.stack((ql & 15, ql >> 4), dim=3).reshape(rows, -1, 2, 4, 32)  # g = 2 (g >> 1) + (g & 1)
        shifts = torch.tensor([0, 2, 4, 6]).reshape(1, 1, 1, 4, 1)
        q = low | (((qh >> shifts) & 3) << 4)
        values = (d[..., None, None, None, None] * scales) * (q.float() - 32).reshape(rows, -1, 2, 4, 2, 16)
    return values.reshape(rows, cols)


def _halves(data: torch.Tensor, rows: int, cols: int, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of every super-block, as float32 [rows, supers]."""
    supers = data.reshape(rows, cols // 256, -1)
    return supers[..., offset : offset + 2].contiguous().view(torch.float16).float().reshape(rows, -1)


def dequantize(data: torch.Tensor, qtype: int, cols: int, interleave: int = 1) -> torch.Tensor:
    """float32 [rows, cols] in file row order; the C kernel where it is built, else the PyTorch reference."""
    if not cpu_gguf.can_gguf(data):
        plain = data if interleave == 1 else deinterleave_rows(data, qtype)
        return dequantize_reference(plain, qtype, cols)
    return cpu_gguf.gguf_dequantize(data, qtype, cols, interleave)


def _bf16_panels(x: torch.Tensor, data: torch.Tensor, qtype: int, bf16: bool) -> bool:
    """Whether x @ data takes the bfloat16 panels (csrc/panel_gemm.c): the layer's `gguf_bf16` (its model's
    matrices are bfloat16), more rows than the GEMVs take for `qtype`, the blocks on the CPU, and the avx512_bf16
    kernel level.
    The rows and the dequantized weights are rounded to bfloat16, as vLLM's GGUF path dequantizes to the model's
    dtype; sums stay float32 (docs/architecture.md, "bfloat16 panels for GGUF prefills")."""
    return (
        bf16
        and x.dim() == 2
        and data.device.type == "cpu"
        and cpu_gguf.has_bf16_panels()
        and x.shape[0] > cpu_gguf.gemv_max_rows(qtype)
    )


def gguf_linear(
    x: torch.Tensor,
    data: torch.Tensor,
    qtype: int,
    cols: int,
    bias: torch.Tensor | None,
    interleave: int = 1,
    bf16: bool = False,
) -> torch.Tensor:
    """x [tokens, cols] @ dequantized(data)^T (+ bias), summed in float32, returned in x's dtype; `data`'s rows
    interleaved by `interleave` (1: as in the file). `bf16`: past the GEMV's rows, bfloat16 panels where the CPU
    has them (`_bf16_panels`)."""
    bias32 = None if bias is None else bias.float().contiguous()
    if _bf16_panels(x, data, qtype, bf16):
        rows = x.to(torch.bfloat16).contiguous()
        return cpu_gguf.gguf_gemm(rows, data, qtype, cols, bias32, interleave).to(x.dtype)
    x32 = x.float().contiguous()
    can = cpu_gguf.can_gguf(x32, data)
    out = cpu_gguf.gguf_gemm(x32, data, qtype, cols, bias32, interleave) if can else None
    if out is None:  # no kernels, or too many rows for this level's kernel: dequantize and use the GEMM
        out = F.linear(x32, dequantize(data, qtype, cols, interleave), bias32)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def gguf_linear_parts(
    x: torch.Tensor,
    parts: list[tuple[torch.Tensor, int]],
    cols: int,
    bias: torch.Tensor | None,
    interleave: int = 1,
    bf16: bool = False,
) -> torch.Tensor:
    """x [tokens, cols] @ the parts' matrices stacked ((blocks, GGML type) each, in output order) (+ bias), each
    product written into its columns of one output: no concatenation afterwards (a copy, and an operation that
    kept every decode step of a Q4_K_M model off the CPU decode graphs, which replay kernel calls only). Whether a
    part takes the bfloat16 panels depends on its type (`_bf16_panels`: the GEMVs take more rows of some)."""
    rows_by_dtype: dict[torch.dtype, torch.Tensor] = {}
    out = torch.empty(x.shape[0], sum(data.shape[0] for data, _ in parts), dtype=torch.float32)
    start = 0
    for data, qtype in parts:
        rows = data.shape[0]
        part_out = out[:, start : start + rows]
        part_bias = None if bias is None else bias[start : start + rows].float().contiguous()
        dtype = torch.bfloat16 if _bf16_panels(x, data, qtype, bf16) else torch.float32
        if dtype not in rows_by_dtype:
            rows_by_dtype[dtype] = x.to(dtype).contiguous()
        rows_in = rows_by_dtype[dtype]
        if dtype == torch.bfloat16:
            cpu_gguf.gguf_gemm(rows_in, data, qtype, cols, part_bias, interleave, part_out)
        elif not (
            cpu_gguf.can_gguf(rows_in, data)
            and cpu_gguf.gguf_gemm(rows_in, data, qtype, cols, part_bias, interleave, part_out) is not None
        ):
            part_out.copy_(F.linear(rows_in, dequantize(data, qtype, cols, interleave), part_bias))
        start += rows
    return out if x.dtype == torch.float32 else out.to(x.dtype)
