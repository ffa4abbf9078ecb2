"""GGUF matrices kept in their quantized blocks (Q4_0, Q4_1, Q8_0) and multiplied without widening the matrix.

The byte layout of each block type is documented in ops/csrc/gguf.h (from ggml's block structs; the tests check
every type against the gguf package's own dequantizer). A matrix [rows, cols] is stored as a uint8 tensor
[rows, cols / 32 * block bytes]: rows stay rows, so merged projections (q|k|v, gate|up) are concatenated rows and
llama.cpp's Q/K row permutation is undone on whole rows. Other GGUF types are dequantized at load (the loader's
choice, gguf_weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedserve.ops import cpu as cpu_ops

GGUF_BLOCK = 32
# GGML type ids (ggml.h: GGML_TYPE_Q4_0 = 2, Q4_1 = 3, Q8_0 = 8) -> bytes per block of 32 weights.
Q4_0, Q4_1, Q8_0 = 2, 3, 8
KEPT_BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q8_0: 34}
TYPE_NAMES = {Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0"}


@dataclass
class QuantizedTensor:
    """A GGUF matrix as read from the file: `data` uint8 [rows, cols / 32 * block bytes] of GGML type `qtype`."""

    data: torch.Tensor
    qtype: int
    shape: tuple[int, int]
    """(rows, cols) of the dequantized matrix."""

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if self.qtype not in KEPT_BLOCK_BYTES:
            raise ValueError(
                f"GGML type {self.qtype} is not kept quantized (only {sorted(TYPE_NAMES.values())})"
            )
        if cols % GGUF_BLOCK or tuple(self.data.shape) != (rows, row_bytes(self.qtype, cols)):
            raise ValueError(
                f"{TYPE_NAMES[self.qtype]} data {tuple(self.data.shape)} does not hold {self.shape}"
            )

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.data, self.qtype, self.shape[1])


def row_bytes(qtype: int, cols: int) -> int:
    return cols // GGUF_BLOCK * KEPT_BLOCK_BYTES[qtype]


def dequantize_reference(data: torch.Tensor, qtype: int, cols: int) -> torch.Tensor:
    """The blocks as float32 [rows, cols], in plain PyTorch (the path without C kernels, and the tests' reference)."""
    rows = data.shape[0]
    blocks = data.reshape(rows, cols // GGUF_BLOCK, KEPT_BLOCK_BYTES[qtype])
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


def dequantize(data: torch.Tensor, qtype: int, cols: int) -> torch.Tensor:
    """float32 [rows, cols]; the C kernel where it is built, else the PyTorch reference."""
    if not cpu_ops.can_gguf(data):
        return dequantize_reference(data, qtype, cols)
    return cpu_ops.gguf_dequantize(data, qtype, cols)


def gguf_linear(
    x: torch.Tensor, data: torch.Tensor, qtype: int, cols: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [tokens, cols] @ dequantized(data)^T (+ bias), in float32, returned in x's dtype."""
    x32 = x.float().contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    out = cpu_ops.gguf_gemm(x32, data, qtype, cols, bias32) if cpu_ops.can_gguf(x32, data) else None
    if out is None:  # no kernels, or too many rows for this level's kernel: dequantize and use the GEMM
        out = F.linear(x32, dequantize(data, qtype, cols), bias32)
    return out if x.dtype == torch.float32 else out.to(x.dtype)
