"""An AWQ or GPTQ checkpoint's tensors, as the model loads them: the parts of each quantized linear layer (qweight,
qzeros, scales, and GPTQ's g_idx) gathered and turned into one weight — GGUF blocks kept quantized (Q4_1, Q4_0
where every zero point is the midpoint, Q8_0 for symmetric 8-bit GPTQ; layers/ct_quant.py::int_to_gguf_blocks), or
float32 when dequantizing at load. Other tensors (biases, norms, embeddings, layers left in float) pass through.

Byte layouts read. Every int32 word holds 32 / bits values, value i at bits [bits * i, bits * (i + 1)), read here
as little-endian bytes; weight[out, in] = (q - zero) * scale with the group of the input channel.
  AWQ GEMM (AutoAWQ's WQLinear_GEMM.from_linear and packing_utils.dequantize_gemm; vLLM's awq.py and
    AWQ_REVERSE_ORDER): qweight int32 [in, out / 8], each word holds 8 consecutive output columns interleaved,
    value i being column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]; qzeros int32 [in / group, out / 8] packed the same
    way; scales float16 [in / group, out]. Zero points are stored as they are.
  GPTQ (AutoGPTQ's QuantLinear.pack and its dequantizing forward, GPTQModel, vLLM's gptq.py): qweight int32
    [in * bits / 32, out], each word holding consecutive input rows of one column; qzeros int32
    [groups, out * bits / 32], consecutive columns in order; scales float16 [groups, out]; g_idx int32 [in], the
    group of each input channel (not monotonic when desc_act reordered the channels). The "gptq" (v1) format
    stores each zero point minus 1 (masked to `bits` bits: a zero point of 0 reads back as 16, as every v1 reader
    has it), "gptq_v2" the zero point itself. Symmetric checkpoints have every zero point at 2^(bits - 1).
GGUF blocks need each group's 32-weight blocks side by side: a non-monotonic g_idx is turned into a column order
(a stable sort of g_idx, each group then holding exactly group_size channels, else refused) that the layer
applies to its input (layers/input_perm.py). An LM head is not permuted: it is dequantized instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pagedserve.layers.ct_quant import int_to_gguf_blocks
from pagedserve.layers.gguf_quant import QuantizedTensor
from pagedserve.layers.input_perm import PermutedWeight
from pagedserve.models.awq_gptq_config import AwqGptqConfig

QUANT_PARTS = ("qweight", "qzeros", "scales", "g_idx")
# AutoAWQ packs column 8c + AWQ_ORDER[i] into value i of word c; value AWQ_REVERSE_ORDER[j] is column 8c + j.
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
# Layers the engine runs as LinearBase (they can permute their input); the ones merged into one matrix share it.
PERMUTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MERGED_WITH = {
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
}

Weight = torch.Tensor | QuantizedTensor | PermutedWeight


@dataclass
class IntLayer:
    """A layer's unpacked integers, rows = output channels, columns = input channels in the input's order."""

    q: torch.Tensor
    """uint8 [rows, cols]: unsigned codes in [0, 2^bits)."""
    zero: torch.Tensor
    """int16 [rows, groups]: the real zero points (format offsets applied)."""
    scale: torch.Tensor
    """float32 [rows, groups] (float16 in the file)."""
    g_idx: torch.Tensor
    """int64 [cols]: the group of each input channel."""

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols] = (q - zero) * scale, exact (a 5-bit integer times a float16 scale)."""
        zero = self.zero.index_select(1, self.g_idx).float()
        return (self.q.float() - zero) * self.scale.index_select(1, self.g_idx)


def unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 words [..., n] -> uint8 [..., n * 32 / bits]: each word's values in bit order, value i at bits
    [bits * i, bits * (i + 1)) (the little-endian bytes of the words, low nibble first)."""
    raw = words.contiguous().view(torch.uint8)
    if bits == 8:
        return raw
    return torch.stack((raw & 15, raw >> 4), dim=-1).reshape(*raw.shape[:-1], -1)


def _check(condition: bool, module: str, config: AwqGptqConfig, what: str) -> None:
    if not condition:
        raise ValueError(f"{module}: {what} ({config.describe()} checkpoint)")


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _check_groups(groups: int, cols: int, module: str, config: AwqGptqConfig) -> None:
    expected = 1 if config.group_size == -1 else -(-cols // config.group_size)
    _check(
        groups == expected,
        module,
        config,
        f"scales hold {groups} groups, group_size {config.group_size} over {cols} input channels makes {expected}",
    )


def unpack_awq(parts: dict[str, torch.Tensor], config: AwqGptqConfig, module: str) -> IntLayer:
    """AutoAWQ GEMM tensors -> integers in our orientation (rows = output channels)."""
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    _check(
        qweight.dtype == torch.int32 and qweight.dim() == 2,
        module,
        config,
        "qweight is not int32 [in, out/8]",
    )
    cols, rows = qweight.shape[0], qweight.shape[1] * 8
    groups = scales.shape[0]
    _check(
        _shape(scales) == (groups, rows)
        and _shape(qzeros) == (groups, rows // 8)
        and qzeros.dtype == torch.int32,
        module,
        config,
        f"qweight {_shape(qweight)}, qzeros {_shape(qzeros)} and scales {_shape(scales)} do not fit together",
    )
    _check_groups(groups, cols, module, config)
    _check(cols % groups == 0, module, config, f"{cols} input channels do not split into {groups} groups")
    order = torch.tensor(AWQ_REVERSE_ORDER)

    def columns(words: torch.Tensor) -> torch.Tensor:  # [n, out / 8] words -> [n, out] values in column order
        values = unpack_words(words, 4).reshape(words.shape[0], -1, 8)
        return values.index_select(2, order).reshape(words.shape[0], -1)

    g_idx = torch.arange(cols) // (cols // groups)
    zero = columns(qzeros).t().to(torch.int16) + config.zero_offset
    return IntLayer(
        columns(qweight).t().contiguous(), zero.contiguous(), scales.float().t().contiguous(), g_idx
    )


def unpack_gptq(parts: dict[str, torch.Tensor], config: AwqGptqConfig, module: str) -> IntLayer:
    """AutoGPTQ / GPTQModel tensors -> integers in our orientation (rows = output channels)."""
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    bits, per_word = config.bits, 32 // config.bits
    _check(
        qweight.dtype == torch.int32 and qweight.dim() == 2,
        module,
        config,
        "qweight is not int32 [in/8, out]",
    )
    cols, rows = qweight.shape[0] * per_word, qweight.shape[1]
    groups = scales.shape[0]
    _check(
        _shape(scales) == (groups, rows)
        and _shape(qzeros) == (groups, -(-rows // per_word))
        and qzeros.dtype == torch.int32,
        module,
        config,
        f"qweight {_shape(qweight)}, qzeros {_shape(qzeros)} and scales {_shape(scales)} do not fit together",
    )
    _check_groups(groups, cols, module, config)
    g_idx = parts.get("g_idx")
    if g_idx is None:  # left out by some writers when desc_act is off: groups in input order
        g_idx = torch.arange(cols) // (config.group_size if config.group_size != -1 else cols)
    g_idx = g_idx.to(torch.int64)
    _check(
        _shape(g_idx) == (cols,) and bool((g_idx >= 0).all()) and bool((g_idx < groups).all()),
        module,
        config,
        f"g_idx {_shape(g_idx)} does not give each of {cols} input channels one of {groups} groups",
    )
    q = unpack_words(qweight.t(), bits)  # [out, in]: word r of a column holds input rows r * per_word + i
    stored = unpack_words(qzeros, bits)[:, :rows]
    zero = stored.t().to(torch.int16) + config.zero_offset
    return IntLayer(q.contiguous(), zero.contiguous(), scales.float().t().contiguous(), g_idx)


def input_order(layer: IntLayer, module: str, config: AwqGptqConfig) -> torch.Tensor | None:
    """The column order that puts each group's channels side by side; None when they already are."""
    cols, groups = layer.q.shape[1], layer.scale.shape[1]
    _check(
        cols % groups == 0, module, config, f"{cols} input channels do not split into {groups} equal groups"
    )
    group = cols // groups
    if torch.equal(layer.g_idx, torch.arange(cols) // group):
        return None
    counts = torch.bincount(layer.g_idx, minlength=groups)
    _check(
        bool((counts == group).all()),
        module,
        config,
        f"g_idx gives its groups {counts.min().item()} to {counts.max().item()} input channels, not {group} "
        "each: the groups cannot be made contiguous",
    )
    return torch.sort(layer.g_idx, stable=True).indices


def repack(
    layer: IntLayer, config: AwqGptqConfig, module: str
) -> tuple[QuantizedTensor, torch.Tensor | None]:
    """GGUF blocks of the layer (columns in the returned order, None: the input's order): Q4_0 / Q8_0 where every
    zero point is the midpoint 2^(bits - 1) of a symmetric checkpoint, else Q4_1 (d = scale, m = -scale * zero,
    rounded once to float16)."""
    perm = input_order(layer, module, config)
    q = layer.q if perm is None else layer.q.index_select(1, perm)
    midpoint = 1 << (config.bits - 1)
    signed_q = (q.to(torch.int16) - midpoint).to(torch.int8)
    symmetric = config.symmetric and bool((layer.zero == midpoint).all())
    if config.bits == 8 and not symmetric:
        raise ValueError(
            f"{module}: 8-bit zero points other than {midpoint} are not supported (asymmetric int8)"
        )
    zero = None if symmetric else layer.zero - midpoint
    return int_to_gguf_blocks(signed_q, layer.scale, zero, config.bits, module), perm


class _InputOrders:
    """Checks that the parts of one merged layer (q|k|v, gate|up) come with one column order."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, torch.Tensor | None]] = {}

    def check(self, module: str, perm: torch.Tensor | None) -> None:
        parent, _, leaf = module.rpartition(".")
        if leaf not in MERGED_WITH:
            return
        key = f"{parent}.{MERGED_WITH[leaf]}"
        first, first_perm = self.seen.setdefault(key, (module, perm))
        same = (perm is None and first_perm is None) or (
            perm is not None and first_perm is not None and torch.equal(perm, first_perm)
        )
        if not same:
            raise ValueError(
                f"{module}: its input channels are ordered differently from {first}'s (act-order g_idx, or a "
                "layer left in float beside act-order ones); the engine multiplies "
                f"{MERGED_WITH[leaf].replace('_', '|')} as one matrix of one input, so their orders must be equal"
            )


def iter_awq_gptq_weights(
    stream: Iterator[tuple[str, torch.Tensor]], config: AwqGptqConfig, keep_quantized: bool
) -> Iterator[tuple[str, Weight]]:
    """(name, weight) pairs: each quantized layer's parts replaced by `{module}.weight`, GGUF blocks (with their
    column order where act-order needs one) where `keep_quantized`, else float32; other tensors as stored."""
    required = {"qweight", "qzeros", "scales"} | ({"g_idx"} if config.method == "gptq" else set())
    unpack = unpack_awq if config.method == "awq" else unpack_gptq
    orders = _InputOrders()
    pending: dict[str, dict[str, torch.Tensor]] = {}

    def build(module: str, parts: dict[str, torch.Tensor]) -> tuple[str, Weight]:
        layer = unpack(parts, config, module)
        if not keep_quantized:
            return f"{module}.weight", layer.dequantize()
        blocks, perm = repack(layer, config, module)
        if perm is not None and module.rpartition(".")[2] not in PERMUTABLE:
            return f"{module}.weight", layer.dequantize()  # the LM head does not permute its input
        orders.check(module, perm)
        return f"{module}.weight", blocks if perm is None else PermutedWeight(blocks, perm)

    for name, tensor in stream:
        module, _, part = name.rpartition(".")
        if part not in QUANT_PARTS:
            if part == "weight" and keep_quantized:
                orders.check(module, None)  # a layer left in float is multiplied in the input's order
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if required <= parts.keys():
            del pending[module]
            yield build(module, parts)
    for module, parts in pending.items():
        missing = required - parts.keys()
        if missing == {"g_idx"} and not config.desc_act:
            yield build(module, parts)
            continue
        raise ValueError(
            f"{module}: checkpoint lacks {', '.join(sorted(missing))} for its {config.describe()} quantization"
        )
