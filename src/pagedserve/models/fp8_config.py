"""An fp8 checkpoint's `quantization_config` (quant_method "fp8", as vLLM and AutoFP8 save them), validated and
expressed as the compressed-tensors scheme it is: float8 e4m3 weights with one scale a tensor (`weight_scale`),
activations quantized per tensor with a scale computed at run time or stored (static). The weights then load as
compressed-tensors FP8 ones do (ct_weights.py). Plain data; no torch.

Read fields (vLLM's Fp8Config): activation_scheme ("dynamic", or "static": an `input_scale` a layer),
ignored_layers (or transformers' modules_to_not_convert: module names kept in float), weight_block_size (DeepSeek-
and Qwen-style block FP8: one scale, `weight_scale_inv`, a block of rows x columns, activations quantized per token
in groups of the block's columns), fmt ("e4m3" or unset).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pagedserve.models.ct_scheme import ActivationScheme, CompressedTensorsConfig, WeightScheme

# vLLM's online and per-tensor FP8: one weight scale a tensor, one activation scale a step (per tensor).
FP8_PER_TENSOR = WeightScheme(
    format="float-quantized",
    type="float",
    num_bits=8,
    strategy="tensor",
    group_size=None,
    symmetric=True,
    activations=ActivationScheme("float", "tensor"),
)
# activation_scheme "static": each layer's input_scale.
FP8_STATIC = replace(FP8_PER_TENSOR, activations=ActivationScheme("float", "static"))


def parse_fp8_config(config: dict[str, Any]) -> CompressedTensorsConfig:
    """ValueError naming the field for what the engine does not run."""
    scheme = config.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(
            f"fp8 quantization_config activation_scheme {scheme!r} is not supported (dynamic or static)"
        )
    block = config.get("weight_block_size")
    if block is not None:
        if not (
            isinstance(block, list) and len(block) == 2 and all(isinstance(v, int) and v > 0 for v in block)
        ):
            raise ValueError(
                f"fp8 quantization_config weight_block_size must be [rows, columns], got {block!r}"
            )
        if scheme != "dynamic":
            raise ValueError("fp8 quantization_config weight_block_size needs activation_scheme 'dynamic'")
    fmt = config.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"fp8 quantization_config fmt {fmt!r} is not supported (only e4m3)")
    ignored = config.get("ignored_layers") or config.get("modules_to_not_convert") or []
    if not isinstance(ignored, list) or not all(isinstance(name, str) for name in ignored):
        raise ValueError("fp8 quantization_config ignored_layers must be a list of module names")
    weights = FP8_PER_TENSOR if scheme == "dynamic" else FP8_STATIC
    if (
        block is not None
    ):  # vLLM's block FP8: activations quantized per token in groups of the block's columns
        activations = ActivationScheme("float", "group", block[1])
        weights = replace(weights, strategy="block", activations=activations, block=(block[0], block[1]))
    # The LM head is never an fp8 layer (vLLM quantizes linear layers only).
    return CompressedTensorsConfig(groups=((("Linear",), weights),), ignore=(*ignored, "lm_head"))
