"""A compressed-tensors checkpoint's tensors, as the model loads them: the parts of each quantized linear layer
(weight_packed, weight_scale, weight_shape, weight_zero_point, or an int8 / float8 weight and its scale) gathered
and turned into one weight — GGUF blocks or a ScaledTensor (layers/ct_quant.py) kept quantized, or float32 when
dequantizing at load. Other tensors pass through.

Byte layout read (compressed-tensors' compressors, the library's own writer in the tests):
  pack-quantized: weight_packed int32 [rows, ceil(cols * bits / 32)], value i of a row at bits [bits * i,
    bits * (i + 1)) with an offset of 2^(bits - 1); weight_scale [rows, cols / group_size] (or [rows, 1] per
    channel); weight_shape int64 [2] = (rows, cols); asymmetric: weight_zero_point int32 packed the same way along
    the rows, [ceil(rows * bits / 32), groups]. weight = (q - zero_point) * scale.
  int-quantized / naive-quantized: weight int8 [rows, cols], weight_scale [rows, 1] or [1].
  float-quantized: weight float8_e4m3fn [rows, cols], weight_scale [rows, 1] or [1].
  Static activation schemes add input_scale [1] (one scale for the layer's input).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pagedserve.layers.ct_quant import ScaledTensor, int_to_gguf_blocks, unpack_int32
from pagedserve.layers.gguf_quant import QuantizedTensor
from pagedserve.models.ct_scheme import CompressedTensorsConfig, WeightScheme

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
PART_NAMES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight", "input_scale")
# Parts of schemes the engine refuses (ct_scheme.py), should a checkpoint carry them anyway; input_scale belongs to
# static activation schemes only.
REFUSED_PARTS = ("input_zero_point", "weight_g_idx", "output_scale", "weight_global_scale")

Weight = torch.Tensor | QuantizedTensor | ScaledTensor


def _static(scheme: WeightScheme | None) -> bool:
    return scheme is not None and scheme.activations is not None and scheme.activations.strategy == "static"


def _required(scheme: WeightScheme) -> set[str]:
    if scheme.format == "pack-quantized":
        parts = {"weight_packed", "weight_scale", "weight_shape"}
        return parts if scheme.symmetric else parts | {"weight_zero_point"}
    return {"weight", "weight_scale", "input_scale"} if _static(scheme) else {"weight", "weight_scale"}


def iter_compressed_weights(
    stream: Iterator[tuple[str, torch.Tensor]], config: CompressedTensorsConfig, keep_quantized: bool
) -> Iterator[tuple[str, Weight]]:
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in stream:
        module, _, part = name.rpartition(".")
        if (
            part == "weight_scale_inv"
        ):  # block FP8 as vLLM's fp8 method saves it: the multiplier, as weight_scale
            part = "weight_scale"
        scheme = config.scheme_for(module) if module.rpartition(".")[2] in LINEAR_NAMES else None
        if part in REFUSED_PARTS or (part == "input_scale" and not _static(scheme)):
            raise ValueError(
                f"{module}: checkpoint tensor {part} belongs to a scheme the engine does not run"
            )
        if scheme is None or part not in PART_NAMES:
            if part in PART_NAMES[:4]:
                raise ValueError(f"{module}: {part} in a layer the quantization_config does not quantize")
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if _required(scheme) <= parts.keys():
            del pending[module]
            yield f"{module}.weight", build_weight(module, scheme, parts, keep_quantized)
    if pending:
        module, parts = next(iter(pending.items()))
        missing = _required(config.scheme_for(module)) - parts.keys()  # type: ignore[arg-type]
        raise ValueError(
            f"{module}: checkpoint lacks {', '.join(sorted(missing))} for its quantization scheme"
        )


def build_weight(
    module: str, scheme: WeightScheme, parts: dict[str, torch.Tensor], keep_quantized: bool
) -> Weight:
    """The layer's weight kept quantized, or float32 as compressed-tensors dequantizes it (exactly: not through
    the GGUF blocks, whose float16 Q4_1 offsets round)."""
    scale = parts["weight_scale"].float()
    if scheme.format == "pack-quantized":
        rows, cols = (int(v) for v in parts["weight_shape"].tolist())
        q = unpack_int32(parts["weight_packed"], scheme.num_bits, cols)
        scale = scale.reshape(rows, -1)
        zero = None
        if not scheme.symmetric:
            zero = unpack_int32(parts["weight_zero_point"].t(), scheme.num_bits, rows).t()
        if tuple(q.shape) != (rows, cols) or (zero is not None and zero.shape != scale.shape):
            raise ValueError(
                f"{module}: weight_packed {tuple(parts['weight_packed'].shape)} does not hold {rows}x{cols}"
            )
        if not keep_quantized:
            group = cols // scale.shape[1]
            offset = 0.0 if zero is None else zero.float().repeat_interleave(group, dim=1)
            return (q.float() - offset) * scale.repeat_interleave(group, dim=1)
        return int_to_gguf_blocks(q, scale, zero, scheme.num_bits, module)
    data = parts["weight"]
    expected = torch.int8 if scheme.type == "int" else torch.float8_e4m3fn
    if data.dtype != expected or data.dim() != 2:
        raise ValueError(
            f"{module}: weight is {data.dtype} {tuple(data.shape)}, {scheme.describe()} stores {expected}"
        )
    rows, cols = data.shape
    if scheme.block is not None:
        blocks = (-(-rows // scheme.block[0]), -(-cols // scheme.block[1]))
        if tuple(scale.shape) != blocks:
            raise ValueError(
                f"{module}: weight_scale {tuple(scale.shape)} is not one a {scheme.block[0]}x{scheme.block[1]} "
                f"block of {rows}x{cols} weights {blocks}"
            )
        if (
            scheme.activations is not None
            and scheme.activations.strategy == "group"
            and cols % scheme.block[1]
        ):
            raise ValueError(
                f"{module}: {cols} columns do not split into activation groups of {scheme.block[1]}"
            )
        weight = ScaledTensor(data.contiguous(), scale.contiguous(), scheme.activations.strategy
                              if scheme.activations else None, block=scheme.block)  # fmt: skip
        return weight if keep_quantized else weight.dequantize()
    if scale.numel() not in (1, rows):
        raise ValueError(f"{module}: weight_scale {tuple(scale.shape)} is neither per tensor nor per channel")
    activations = scheme.activations.strategy if scheme.activations else None
    input_scale = None
    if _static(scheme):
        if parts["input_scale"].numel() != 1:
            raise ValueError(
                f"{module}: input_scale {tuple(parts['input_scale'].shape)} is not one per tensor"
            )
        input_scale = float(parts["input_scale"].float().reshape(()))
    if not keep_quantized:
        return data.float() * scale.reshape(-1, 1)
    scales = scale.reshape(-1).expand(rows).contiguous()
    return ScaledTensor(data.contiguous(), scales, activations, input_scale)
