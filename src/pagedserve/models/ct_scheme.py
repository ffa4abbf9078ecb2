"""A compressed-tensors checkpoint's `quantization_config` (config.json, written by llm-compressor): which scheme
each linear layer was saved in, validated against what the engine runs. Plain data; no torch.

The schemes run (vLLM's names): weight-only int4 / int8 with group or channel scales ("pack-quantized", W4A16
symmetric or not, W8A16), int8 weights with per-channel scales and dynamic int8 activations ("int-quantized",
W8A8), float8 e4m3 weights with per-tensor or per-channel scales and dynamic activations ("float-quantized",
FP8_DYNAMIC), or scales per block of 128 x 128 weights and per 128-value group of activations (FP8_BLOCK); for
int8 and per-tensor / per-channel float8, activations may instead have one static scale a layer (input_scale: FP8).
Anything else is refused naming the layer and what it asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SUPPORTED_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "float-quantized")
# GGUF blocks the weight-only int schemes are repacked into hold 32 weights (layers/ct_quant.py).
GROUP_MULTIPLE = 32


@dataclass(frozen=True)
class ActivationScheme:
    type: str
    """"int" (int8) or "float" (float8 e4m3)."""
    strategy: str
    """"token" (one scale per row of the activations), "tensor" (one for all), "group" (one per `group_size` values
    of a row; with block weights), all computed at run time, or "static" (the checkpoint's input_scale, one per
    layer)."""
    group_size: int | None = None


@dataclass(frozen=True)
class WeightScheme:
    format: str
    """How the weight is stored: pack-quantized (int32 words), int-quantized / naive-quantized (int8),
    float-quantized (float8_e4m3fn)."""
    type: str
    """"int" or "float"."""
    num_bits: int
    strategy: str
    """"channel", "group", "tensor" or "block": one scale per output row, per `group_size` weights of a row, one,
    or one per `block` of rows x columns."""
    group_size: int | None
    symmetric: bool
    """False: a zero point per scale (weight_zero_point)."""
    activations: ActivationScheme | None
    """Dynamic activation quantization; None for weight-only (A16) schemes."""
    block: tuple[int, int] | None = None
    """For strategy "block": (rows, columns) one weight scale covers."""

    def describe(self) -> str:
        what = f"{self.format} {self.type}{self.num_bits} {self.strategy}"
        if self.group_size:
            what += f" {self.group_size}"
        if self.block:
            what += f" {self.block[0]}x{self.block[1]}"
        if not self.symmetric:
            what += " asymmetric"
        if self.activations:
            what += f", {self.activations.type}8 {self.activations.strategy} activations"
        return what


@dataclass(frozen=True)
class CompressedTensorsConfig:
    groups: tuple[tuple[tuple[str, ...], WeightScheme], ...]
    """(targets, scheme) per config group, in the file's order."""
    ignore: tuple[str, ...]

    def scheme_for(self, module: str) -> WeightScheme | None:
        """The scheme of linear layer `module` (a Hugging Face module name), None where it is not quantized."""
        if any(_matches(target, module) for target in self.ignore):
            return None
        for targets, scheme in self.groups:
            if any(_matches(target, module) for target in targets):
                return scheme
        return None


def _matches(target: str, module: str) -> bool:
    # compressed-tensors' rules: a class name ("Linear": every linear layer asked about here), "re:<pattern>"
    # matched from the start of the name, or the exact module name.
    if target == "Linear":
        return True
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == module


def parse_compressed_tensors_config(config: dict[str, Any]) -> CompressedTensorsConfig:
    """Validates `quantization_config`; ValueError naming the field for what the engine does not run."""
    status = config.get("quantization_status", "compressed")
    if status != "compressed":
        raise ValueError(
            f"compressed-tensors quantization_status {status!r} is not supported: only checkpoints saved "
            "compressed (quantization_status 'compressed') are"
        )
    for field in ("sparsity_config", "transform_config"):
        if config.get(field):
            raise ValueError(f"compressed-tensors {field} is not supported yet")
    if config.get("kv_cache_scheme"):
        raise ValueError(
            "compressed-tensors kv_cache_scheme is not supported yet (KV cache stays unquantized)"
        )
    groups = config.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise ValueError("compressed-tensors quantization_config has no config_groups")
    parsed = []
    for name, group in groups.items():
        targets = tuple(group.get("targets") or ())
        if not targets:
            raise ValueError(f"compressed-tensors config group {name!r} has no targets")
        parsed.append((targets, _parse_scheme(name, group, config.get("format"))))
    return CompressedTensorsConfig(groups=tuple(parsed), ignore=tuple(config.get("ignore") or ()))


def _parse_scheme(name: str, group: dict[str, Any], default_format: str | None) -> WeightScheme:
    where = f"compressed-tensors config group {name!r}"
    fmt = group.get("format") or default_format
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(
            f"{where}: format {fmt!r} is not supported (supported: {', '.join(SUPPORTED_FORMATS)})"
        )
    weights = group.get("weights")
    if not weights:
        raise ValueError(f"{where}: no weights scheme (activation-only quantization is not supported)")
    if group.get("output_activations"):
        raise ValueError(f"{where}: output_activations quantization is not supported")
    kind, bits = weights.get("type", "int"), int(weights.get("num_bits", 8))
    strategy, group_size = weights.get("strategy"), weights.get("group_size")
    symmetric = bool(weights.get("symmetric", True))
    if weights.get("dynamic"):
        raise ValueError(f"{where}: dynamic weight quantization is not supported")
    if weights.get("actorder") not in (None, False, "static", "weight"):
        raise ValueError(f"{where}: weights actorder {weights['actorder']!r} is not supported yet")
    if strategy == "group" and (not group_size or group_size % GROUP_MULTIPLE):
        raise ValueError(f"{where}: group_size {group_size} must be a multiple of {GROUP_MULTIPLE}")
    activations = _parse_activations(where, group.get("input_activations"))
    block = None
    if strategy == "block":
        structure = weights.get("block_structure")
        if not (isinstance(structure, list) and len(structure) == 2 and all(int(v) > 0 for v in structure)):
            raise ValueError(
                f"{where}: block weights need a block_structure [rows, columns], got {structure!r}"
            )
        block = (int(structure[0]), int(structure[1]))
        group_size = None
        if activations is not None and activations.strategy == "group" and activations.group_size != block[1]:
            raise ValueError(
                f"{where}: input_activations group_size {activations.group_size} must equal the weight blocks' "
                f"{block[1]} columns"
            )
    elif activations is not None and activations.strategy == "group":
        raise ValueError(f"{where}: group input_activations are supported with block weights only")
    scheme = WeightScheme(fmt, kind, bits, strategy, group_size, symmetric, activations, block)
    if kind == "int" and fmt != "float-quantized":
        if activations is None:
            ok = bits in (4, 8) and strategy in ("group", "channel") and (bits == 4 or symmetric)
        else:
            ok = bits == 8 and strategy in ("channel", "tensor") and symmetric and activations.type == "int"
    elif kind == "float" and fmt == "float-quantized":
        ok = bits == 8 and strategy in ("tensor", "channel", "block") and symmetric
        ok = ok and (activations is None or activations.type == "float")
    else:
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: weights {scheme.describe()} are not supported; supported: W4A16 (int4, group or channel, "
            "symmetric or not), W8A16 (int8, group or channel, symmetric), W8A8 (int8 channel or tensor weights, "
            "int8 activations), FP8 (float8 e4m3 tensor, channel or block weights, float8 activations); "
            "activations dynamic or with one static scale"
        )
    return scheme


def _parse_activations(where: str, activations: dict[str, Any] | None) -> ActivationScheme | None:
    if not activations:
        return None
    kind, strategy = activations.get("type", "int"), activations.get("strategy")
    if not activations.get("dynamic"):
        if strategy != "tensor":
            raise ValueError(
                f"{where}: static input_activations with strategy {strategy!r} are not supported (only one "
                "static scale per tensor, or dynamic activations)"
            )
        strategy = "static"
    if int(activations.get("num_bits", 8)) != 8 or strategy not in ("token", "tensor", "static", "group"):
        raise ValueError(
            f"{where}: input_activations {kind}{activations.get('num_bits')} {strategy} are not supported "
            "(only 8-bit, per token or per tensor)"
        )
    if not activations.get("symmetric", True):
        raise ValueError(f"{where}: asymmetric input_activations are not supported")
    if strategy == "group":
        return ActivationScheme(kind, strategy, int(activations.get("group_size") or 0))
    return ActivationScheme(kind, strategy)
