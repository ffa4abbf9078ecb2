"""compressed-tensors checkpoints written by the compressed-tensors library itself (the writer llm-compressor
uses): a transformers model (a tiny random Llama, or the bundled model dequantized), a preset scheme applied,
min-max weight scales (what llm-compressor's default observer computes for weights, i.e. round-to-nearest without
a calibration set), compressed and saved with the library's ModelCompressor. Also the library's own decompression
of every quantized layer, the tests' reference weights."""

from __future__ import annotations

import atexit
import functools
import json
import pathlib
import shutil
import tempfile
from typing import Any

import torch
import transformers
from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.quantization import (
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors import safe_open

FORMATS = {
    "W4A16": "pack-quantized",
    "W4A16_ASYM": "pack-quantized",
    "W8A16": "pack-quantized",
    "W8A8": "int-quantized",
    "FP8_DYNAMIC": "float-quantized",
    "FP8": "float-quantized",
    "FP8_BLOCK": "float-quantized",
}


def tiny_llama(seed: int = 0, tied: bool = False) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16)


def _min_max_scales(module: torch.nn.Module) -> None:
    args = module.quantization_scheme.weights
    weight = module.weight.float()
    if args.strategy == "group":
        grouped = weight.reshape(weight.shape[0], -1, args.group_size)
        low, high = grouped.amin(-1), grouped.amax(-1)
    elif args.strategy == "channel":
        low, high = weight.amin(1, keepdim=True), weight.amax(1, keepdim=True)
    elif args.strategy == "block":
        rows, cols = args.block_structure
        blocks = weight.reshape(weight.shape[0] // rows, rows, weight.shape[1] // cols, cols)
        low, high = blocks.amin(dim=(1, 3)), blocks.amax(dim=(1, 3))
    else:
        low, high = weight.amin().reshape(1), weight.amax().reshape(1)
    scale, zero_point = calculate_qparams(low, high, args)
    module.weight_scale.data.copy_(scale.to(module.weight_scale.dtype).reshape(module.weight_scale.shape))
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))
    module.quantization_status = QuantizationStatus.FROZEN


def _input_ranges(model: transformers.PreTrainedModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each linear layer's smallest and largest input value over a calibration pass (64 random token ids): what
    llm-compressor's min-max observer sees for static activation scales, on a stand-in for a calibration set."""
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().float()
            low, high = ranges.get(name, (x.min(), x.max()))
            ranges[name] = (torch.minimum(low, x.min()), torch.maximum(high, x.max()))

        return hook

    handles = [
        module.register_forward_pre_hook(observe(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    ids = torch.randint(3, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return ranges


def compress_and_save(
    model: transformers.PreTrainedModel,
    folder: pathlib.Path,
    preset: str,
    group_size: int = 32,
    strategy: str | None = None,
    ignore: tuple[str, ...] = ("lm_head",),
    static_activations: bool = False,
    block: int | None = None,
) -> pathlib.Path:
    """`model` quantized with `preset` (a compressed-tensors preset name) and saved to `folder` (config.json with
    the quantization_config, model.safetensors); group schemes use `group_size`, `strategy` overrides the
    weights' strategy, `static_activations` makes the activations' scale one static value a layer (as the FP8
    preset has it), `block` sets a block scheme's block size (rows, columns and the activations' group: the tiny
    model is narrower than the presets' 128)."""
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if block:
        scheme.weights.block_structure = [block, block]
        scheme.input_activations.group_size = block
    if static_activations:
        scheme.input_activations.dynamic = False
        scheme.input_activations.strategy = "tensor"
    if strategy:
        scheme.weights.strategy = strategy
        scheme.weights.group_size = group_size if strategy == "group" else None
    elif scheme.weights.group_size:
        scheme.weights.group_size = group_size
    static = scheme.input_activations is not None and not scheme.input_activations.dynamic
    ranges = _input_ranges(model) if static else {}
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(ignore))
    )
    for name, module in model.named_modules():
        if hasattr(module, "quantization_scheme") and hasattr(module, "weight_scale"):
            _min_max_scales(module)
        if hasattr(module, "quantization_scheme") and hasattr(module, "input_scale"):
            low, high = ranges[name]
            scale, _ = calculate_qparams(low.reshape(1), high.reshape(1), scheme.input_activations)
            module.input_scale.data.copy_(
                scale.to(module.input_scale.dtype).reshape(module.input_scale.shape)
            )
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=FORMATS[preset])
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    return folder


def write_tiny_ct(folder: pathlib.Path, preset: str, seed: int = 0, **kwargs: Any) -> pathlib.Path:
    return compress_and_save(tiny_llama(seed), folder, preset, **kwargs)


@functools.cache
def bundled_float_folder() -> pathlib.Path:
    """transformers' own float32 dequantization of the bundled GGUF, saved once per test process as a plain Hugging
    Face folder: reading the GGUF through transformers takes ~20 s here, the saved folder ~1 s."""
    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    # transformers marks a model read from GGUF as quantized and refuses to save it: the same weights in a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bundled-float-"))
    atexit.register(shutil.rmtree, folder, True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bundled_float_model() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """The bundled SmolLM2 GGUF dequantized by transformers (float32) as a plain model (savable; a fresh copy on
    each call), and its tokenizer with the chat template."""
    folder = bundled_float_folder()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


def write_bundled_ct(folder: pathlib.Path, preset: str, group_size: int = 64) -> pathlib.Path:
    """The bundled model (bundled_float_model) quantized with `preset` and saved with its tokenizer and chat
    template: a real model's checkpoint in the format llm-compressor writes (its 576-wide layers take groups of
    64)."""
    model, tokenizer = bundled_float_model()
    compress_and_save(model, folder, preset, group_size=group_size)
    tokenizer.save_pretrained(folder)
    return folder


def reference_weights(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every quantized layer's weight as the compressed-tensors library decompresses it (float32)."""
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = next(iter(config["config_groups"].values()))
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    compressor = BaseCompressor.load_from_registry(group["format"])
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(folder / "model.safetensors"), "pt") as stored:
        for name in stored.keys():
            module, _, part = name.rpartition(".")
            quantized_weight = part == "weight" and stored.get_slice(name).get_dtype() in ("I8", "F8_E4M3")
            if part.startswith("weight_") or quantized_weight:
                tensor = stored.get_tensor(name)
                # float32 scales: the library dequantizes in the scale's dtype, bfloat16 as saved
                parts.setdefault(module, {})[part] = tensor.float() if part == "weight_scale" else tensor
    return {
        f"{module}.weight": compressor.decompress(state, scheme)["weight"].float()
        for module, state in parts.items()
    }
