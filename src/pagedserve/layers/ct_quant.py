"""compressed-tensors weights in memory, and their products.

Weight-only int4 / int8 schemes (W4A16, W8A16) are repacked at load into GGUF blocks of 32 weights, which the
GGUF kernels already multiply on every ISA level (gguf_quant.py): symmetric int4 with scale s is exactly Q4_0
(d = s, nibble = q + 8), asymmetric int4 is Q4_1 (d = s, m = -s (8 + zero point)), symmetric int8 is Q8_0. A group
of 64 or 128 weights is 2 or 4 blocks with the same scale. Scales are stored in float16 there: bfloat16 scales
convert exactly (their 8 mantissa bits fit in float16's 11) inside float16's range, which is checked; Q4_1's m is
rounded once to float16 (relative error <= 2^-11).

W8A8 (int8 weights, per-channel scales, dynamic int8 activations) and FP8 (float8 e4m3 weights, dynamic float8
activations) stay as `ScaledTensor`: int8 rows multiplied in int32 (int8_gemm, or torch._int_mm on AVX-512) after
quantizing each row of the activations per token (scale = absmax / 127.5, compressed-tensors' own definition:
transformers running the checkpoint then matched our logits within 2e-7, against 7e-3 with vLLM's absmax / 127) or
with a checkpoint's static input_scale; float8 weights, with a scale a row or a block, multiplied by a C kernel that
widens each weight as it reads it (a decode step's few rows), or widened once and multiplied by the GEMM (prefill).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedserve.layers.gguf_quant import GGUF_BLOCK, Q4_0, Q4_1, Q8_0, QuantizedTensor
from pagedserve.ops import cpu_scaled as cpu_ops

FP8_MAX = 448.0  # largest float8 e4m3fn value
INT8_MAX = 127.5  # half of int8's range of 255 steps, as compressed-tensors computes symmetric scales
# Rows up to which float8 weights are multiplied by the C kernel (gemm_e4m3w), each weight widened as it is read;
# past them the weight is widened to float32 once and the GEMM runs. 3072 x 576 weights: 8 rows 0.61 against 1.01
# ms, 16 rows 1.21 against 1.13 (AVX2 EPYC, 2026-12-05); 8 is also the largest decode graph.
FP8_GEMM_MAX_ROWS = 8


@dataclass
class ScaledTensor:
    """int8 or float8_e4m3fn weights [rows, cols] with float32 scales, one a row or one a block; weight = data *
    its scale."""

    data: torch.Tensor
    scale: torch.Tensor
    """float32 [rows] (a per-tensor scale repeated on every row), or with `block` [ceil(rows / block rows),
    ceil(cols / block columns)]."""
    activations: str | None
    """Activation quantization: "token", "tensor" or "group" (dynamic: a scale from the absmax of each row, of the
    whole input, or of each block-columns-wide group of a row: block FP8), "static" (the checkpoint's
    input_scale), or None (activations stay in float)."""
    input_scale: float | None = None
    """For "static": the activations' scale."""
    block: tuple[int, int] | None = None
    """(rows, columns) a weight scale covers (DeepSeek-style block FP8: 128 x 128); None: one scale a row."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def dequantize(self) -> torch.Tensor:
        return self.data.float() * expand_scales(self.scale, self.block, self.shape)


def expand_scales(scale: torch.Tensor, block: tuple[int, int] | None, shape: tuple[int, int]) -> torch.Tensor:
    """The scale of every weight of a [rows, cols] weight (broadcastable): [rows, 1], or a block's over its rows x
    columns."""
    if block is None:
        return scale[:, None]
    rows, cols = shape
    return scale.repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :cols]


def _per_row_scales(
    values: torch.Tensor, strategy: str, maximum: float, static: float | None = None
) -> torch.Tensor:
    """Scales [rows, 1] (or [1, 1]); groups: _fp8_activations."""
    if strategy == "static":
        return torch.tensor(static, dtype=torch.float32).reshape(1, 1)
    if strategy == "token":
        amax = values.abs().amax(dim=-1, keepdim=True)
    else:
        amax = values.abs().amax().reshape(1, 1)
    return (amax / maximum).clamp(min=1e-12)


def _fp8_activations(x32: torch.Tensor, strategy: str, static: float | None, group: int) -> torch.Tensor:
    """x rounded to float8 e4m3 with its scale and scaled back (the kernels' fp8_quantize, in PyTorch)."""
    if group:
        grouped = x32.reshape(x32.shape[0], -1, group)
        scale = (grouped.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        rounded = (grouped / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale
        return rounded.reshape(x32.shape)
    scale = _per_row_scales(x32, strategy, FP8_MAX, static)
    return (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def scaled_linear(
    x: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    activations: str | None,
    bias: torch.Tensor | None,
    input_scale: float | None = None,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:
    """x [tokens, cols] @ (data * scale)^T (+ bias), activations quantized as the checkpoint's scheme says (with
    `input_scale` for "static", in groups of block[1] for "group"); float32 arithmetic, returned in x's dtype."""
    if data.dtype == torch.int8 and activations is not None:
        # With the kernels a decode step's W8A8 product is three C calls (quantize, product, epilogue), which a
        # decode graph replays (worker/cpu_graph.py).
        quantized = cpu_ops.int8_quantize(x, activations == "tensor", input_scale)
        if quantized is not None:
            xq, x_scales = quantized
        else:
            x32 = x.float()
            x_scale = _per_row_scales(x32, activations, INT8_MAX, input_scale)
            xq = torch.round(x32 / x_scale).clamp_(-128, 127).to(torch.int8)
            x_scales = x_scale.reshape(-1).expand(xq.shape[0]).contiguous()
        acc = cpu_ops.int8_gemm(xq, data)
        if acc is None:
            acc = torch._int_mm(xq, data.t())
        bias32 = None if bias is None else bias.float().contiguous()
        out = cpu_ops.int8_epilogue(acc, x_scales, scale, bias32, x.dtype)
        if out is not None:
            return out
        out = acc.float().mul_(x_scales[:, None]).mul_(scale)  # no kernels: in place, int8_rows.c says why
    else:
        x32 = None
        if activations is not None:  # float8 activations: the values the checkpoint was calibrated with
            group = block[1] if activations == "group" and block else 0
            x32 = cpu_ops.fp8_quantize(x, activations == "tensor", input_scale, group)
            if x32 is None:
                x32 = _fp8_activations(x.float(), activations, input_scale, group)
        if data.dtype == torch.float8_e4m3fn and x.shape[0] <= FP8_GEMM_MAX_ROWS:
            bias32 = None if bias is None else bias.float().contiguous()
            out = cpu_ops.gemm_e4m3w(x if x32 is None else x32, data, scale, bias32, x.dtype, block)
            if out is not None:
                return out
        weight = cpu_ops.e4m3_dequantize(data, scale, block) if data.dtype == torch.float8_e4m3fn else None
        if weight is None:
            weight = data.float() * expand_scales(scale, block, tuple(data.shape))
        out = F.linear(x.float() if x32 is None else x32, weight)
    if bias is not None:
        out.add_(bias.float())
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def _float16_scales(scale: torch.Tensor, layer: str) -> torch.Tensor:
    half = scale.float().to(torch.float16)
    relative = ((half.float() - scale.float()).abs() / scale.float().abs().clamp(min=1e-30)).max().item()
    if not torch.isfinite(half).all() or relative > 2**-10:
        raise ValueError(f"{layer}: weight scales outside float16's range (the GGUF blocks they repack into)")
    return half


def _as_bytes(values: torch.Tensor) -> torch.Tensor:
    """[..., n] float16 -> [..., 2n] uint8, little-endian as GGUF stores it."""
    return values.contiguous().view(torch.uint8)


def int_to_gguf_blocks(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int, layer: str
) -> QuantizedTensor:
    """Signed int weights q [rows, cols] (int4 in [-8, 7] or int8), scales [rows, groups] (groups 1 for per
    channel) and signed zero points like the scales (None: symmetric) as Q4_0 / Q4_1 / Q8_0 blocks."""
    rows, cols = q.shape
    groups = scale.shape[1]
    if cols % GGUF_BLOCK or cols % groups or (cols // groups) % GGUF_BLOCK:
        raise ValueError(
            f"{layer}: {cols} columns in {groups} groups do not split into blocks of {GGUF_BLOCK}"
        )
    per_group = cols // groups // GGUF_BLOCK
    d = _float16_scales(scale, layer).repeat_interleave(per_group, dim=1)  # [rows, blocks]
    blocks = q.reshape(rows, cols // GGUF_BLOCK, GGUF_BLOCK)
    head = _as_bytes(d.unsqueeze(-1))  # [rows, blocks, 2]
    if bits == 8:
        if zero_point is not None:
            raise ValueError(f"{layer}: asymmetric int8 weights are not supported")
        data, qtype = torch.cat((head, blocks.to(torch.int8).view(torch.uint8)), dim=-1), Q8_0
    else:
        nibbles = (blocks.to(torch.int16) + 8).to(torch.uint8)  # weights 0-15 low nibbles, 16-31 high
        packed = nibbles[..., : GGUF_BLOCK // 2] | (nibbles[..., GGUF_BLOCK // 2 :] << 4)
        if zero_point is None:
            data, qtype = torch.cat((head, packed), dim=-1), Q4_0
        else:
            m = -scale.float() * (8 + zero_point.float())
            m = m.to(torch.float16).repeat_interleave(per_group, dim=1)
            data, qtype = torch.cat((head, _as_bytes(m.unsqueeze(-1)), packed), dim=-1), Q4_1
    return QuantizedTensor(data.reshape(rows, -1).contiguous(), qtype, (rows, cols))


def unpack_int32(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """compressed-tensors' pack_to_int32 undone along the last dim: value i of a row sits at bits [bits*i,
    bits*(i+1)) of the row's little-endian int32 words, stored with an offset of 2^(bits-1); signed int8 out."""
    raw = packed.contiguous().view(torch.uint8)  # little-endian: the bytes in bit order
    if bits == 8:
        values = raw
    elif bits == 4:
        values = torch.stack((raw & 15, raw >> 4), dim=-1).reshape(*raw.shape[:-1], -1)
    else:
        raise ValueError(f"{bits}-bit packed weights are not supported")
    return (values[..., :count].to(torch.int16) - (1 << (bits - 1))).to(torch.int8)
