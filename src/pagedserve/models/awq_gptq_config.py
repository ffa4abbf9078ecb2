"""An AWQ or GPTQ checkpoint's `quantization_config` (config.json), validated against what the engine runs. Plain
data; no torch.

Keys read, as the writers save them:
  AWQ (AutoAWQ's `to_transformers_dict`, transformers' AwqConfig, GPTQModel's AWQ export): quant_method "awq",
    bits (or w_bit), group_size (or q_group_size; -1 for one group per row), zero_point, version ("gemm"; GPTQModel
    also writes it as `format`), backend ("autoawq"; llm-awq packs GEMV_FAST), modules_to_not_convert (those
    layers are saved as float `weight` tensors and pass through).
  GPTQ (AutoGPTQ, GPTQModel, optimum / transformers' GPTQConfig): quant_method "gptq", bits, group_size, sym,
    desc_act, checkpoint_format (or format) "gptq" (v1: stored zero points are the real ones minus 1) or "gptq_v2"
    (stored as they are), pack_dtype "int32", dynamic (GPTQModel's per-module overrides; only "-:" exclusions,
    which leave those layers in float, are accepted), lm_head. static_groups, true_sequential, damp_percent and
    GPTQModel's act_group_aware change how the weights were chosen, not how they are stored (g_idx says which
    group each input channel uses), so they are accepted.
Anything else is refused naming the field and the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# GGUF blocks the layers are repacked into hold 32 weights (layers/ct_quant.py::int_to_gguf_blocks).
GROUP_MULTIPLE = 32


@dataclass(frozen=True)
class AwqGptqConfig:
    method: str
    """"awq" or "gptq"."""
    bits: int
    """4 (both) or 8 (GPTQ, symmetric)."""
    group_size: int
    """Input channels per scale; -1: one scale per output row."""
    symmetric: bool
    """GPTQ `sym`, AWQ `not zero_point`: every zero point is 2^(bits-1) (checked on the tensors, not trusted)."""
    zero_offset: int
    """Added to each stored zero point: 1 for GPTQ's v1 format ("gptq"), 0 for "gptq_v2" and AWQ."""
    desc_act: bool
    """GPTQ act-order: g_idx may send input channels to groups out of order."""

    def describe(self) -> str:
        group = "per channel" if self.group_size == -1 else f"group {self.group_size}"
        what = f"{self.method} int{self.bits} {group}"
        what += " symmetric" if self.symmetric else " asymmetric"
        if self.method == "gptq":
            what += f", format {'gptq' if self.zero_offset else 'gptq_v2'}"
            what += ", desc_act" if self.desc_act else ""
        return what


def parse_awq_gptq_config(raw: dict[str, Any]) -> AwqGptqConfig:
    """Validates a quantization_config whose quant_method is "awq" or "gptq"; ValueError naming the field."""
    method = str(raw.get("quant_method", "")).lower()
    if method == "awq":
        return _parse_awq(raw)
    if method == "gptq":
        return _parse_gptq(raw)
    raise ValueError(f"quant_method {method!r} is neither awq nor gptq")


def _first(raw: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    return default


def _group_size(raw: dict[str, Any], where: str, *keys: str) -> int:
    value = _first(raw, *keys, default=-1)
    try:
        group = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: group_size {value!r} is not a number") from None
    if group != -1 and (group <= 0 or group % GROUP_MULTIPLE):
        raise ValueError(
            f"{where}: group_size {group} is not supported: it must be -1 (per channel) or a multiple of "
            f"{GROUP_MULTIPLE} (the GGUF blocks the weights are repacked into)"
        )
    return group


def _parse_awq(raw: dict[str, Any]) -> AwqGptqConfig:
    where = "AWQ quantization_config"
    bits = int(_first(raw, "bits", "w_bit", default=4))
    if bits != 4:
        raise ValueError(f"{where}: bits {bits} is not supported (AWQ GEMM checkpoints are 4-bit)")
    version = str(_first(raw, "version", "format", default="gemm")).lower()
    if version != "gemm":
        raise ValueError(
            f"{where}: version {version!r} is not supported; only 'gemm' (AutoAWQ's default packing) is"
        )
    backend = raw.get("backend")
    if backend not in (None, "autoawq"):
        raise ValueError(f"{where}: backend {backend!r} is not supported (its packing is not AutoAWQ's GEMM)")
    group = _group_size(raw, where, "group_size", "q_group_size")
    symmetric = not bool(raw.get("zero_point", True))
    return AwqGptqConfig("awq", bits, group, symmetric, zero_offset=0, desc_act=False)


def _parse_gptq(raw: dict[str, Any]) -> AwqGptqConfig:
    where = "GPTQ quantization_config"
    bits = int(raw.get("bits", 4))
    symmetric = bool(raw.get("sym", True))
    if bits not in (4, 8):
        raise ValueError(f"{where}: bits {bits} is not supported (4-bit, and symmetric 8-bit)")
    if bits == 8 and not symmetric:
        raise ValueError(f"{where}: bits 8 with sym false is not supported (asymmetric int8 weights)")
    if raw.get("is_marlin_format"):
        raise ValueError(f"{where}: is_marlin_format is not supported (Marlin-packed weights)")
    fmt = str(_first(raw, "checkpoint_format", "format", default="gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"{where}: checkpoint_format {fmt!r} is not supported; supported: gptq, gptq_v2")
    pack_dtype = str(raw.get("pack_dtype") or "int32").removeprefix("torch.")
    if pack_dtype != "int32":
        raise ValueError(f"{where}: pack_dtype {pack_dtype!r} is not supported (only int32 words)")
    dynamic = raw.get("dynamic") or {}
    overrides = [key for key in dynamic if not str(key).startswith("-:")]
    if overrides:
        raise ValueError(
            f"{where}: dynamic per-module overrides ({', '.join(map(str, overrides[:3]))}) are not supported; "
            "only '-:' exclusions are"
        )
    group = _group_size(raw, where, "group_size")
    desc_act = bool(raw.get("desc_act", False))
    return AwqGptqConfig("gptq", bits, group, symmetric, zero_offset=int(fmt == "gptq"), desc_act=desc_act)
