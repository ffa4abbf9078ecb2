"""AWQ and GPTQ checkpoints as AutoAWQ and AutoGPTQ / GPTQModel save them, written here: no library that writes
these formats fits the test environment (autoawq 0.2.9 is deprecated, needs triton and datasets and was last tested
with transformers 4.51; auto-gptq 0.7.1's wheel carries CUDA extensions; gptqmodel 7.7 needs torch >= 2.14 and
builds kernels), so this module quantizes and packs by itself, following the reference code field by field:

  quantization: plain round-to-nearest with min-max scales per group of input channels (what AutoGPTQ's
    Quantizer.find_params computes, without a calibration set: asymmetric zero = round(-min(w, 0) / scale),
    symmetric zero = 2^(bits-1) and scale from max |w|), scales rounded to float16 first, as the files store them.
  AWQ GEMM (AutoAWQ awq/modules/linear/gemm.py WQLinear_GEMM.from_linear): qweight int32 [in, out / 8], word c of
    a row holding columns 8c + [0, 2, 4, 6, 1, 3, 5, 7][i] at bits 4i; qzeros int32 [in / group, out / 8] packed
    the same way; scales float16 [in / group, out]; config.json's quantization_config as AutoAWQ's
    to_transformers_dict writes it.
  GPTQ (AutoGPTQ qlinear_cuda.QuantLinear.pack; GPTQModel for gptq_v2): qweight int32 [in * bits / 32, out],
    word r of a column holding input rows r * (32 / bits) + i at bits * i; qzeros int32 [groups, out * bits / 32],
    consecutive columns, storing zero - 1 in the v1 "gptq" format and zero itself in "gptq_v2"; scales float16
    [groups, out]; g_idx int32 [in]. desc_act: the input channels are visited in a random order (standing for
    GPTQ's descending Hessian diagonal) and channel order[k] joins group k // group_size, so g_idx is a real
    non-trivial permutation shared by the layers of one input (q/k/v, gate/up), as in real checkpoints.

A one-off check (2026-12-02, not part of the suite: the libraries' own packing code, run from their sources on
this CPU) found AutoAWQ 0.2.9's from_linear and AutoGPTQ 0.7.1's pack (4-bit asymmetric and symmetric, 8-bit,
with an act-order g_idx) produce the same int32 tensors as the packers here; their dequantizers (float16) gave
`QuantizedLinear.dequantize`'s weights within float16 rounding, and the engine's reader gave them exactly.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
import transformers
from safetensors.torch import save_file

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Layers that see the same input share one act order (one Hessian in GPTQ).
INPUT_OF = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "o", "gate_proj": "mlp",
            "up_proj": "mlp", "down_proj": "down"}  # fmt: skip


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    """Random float32 Llama whose layers take groups of 128 (hidden 128, intermediate 256, head_dim 32)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config).float().eval()


@dataclass
class QuantizedLinear:
    """One layer quantized: codes q [out, in] in [0, 2^bits), zero [groups, out], scale float16 [groups, out],
    g_idx [in] (the group of each input channel)."""

    q: torch.Tensor
    zero: torch.Tensor
    scale: torch.Tensor
    g_idx: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """float32 [out, in] = (q - zero) * scale, with each input channel's group."""
        zero = self.zero.t()[:, self.g_idx].float()
        return (self.q.float() - zero) * self.scale.t()[:, self.g_idx].float()


def quantize_rtn(weight: torch.Tensor, g_idx: torch.Tensor, bits: int, symmetric: bool) -> QuantizedLinear:
    """Min-max round-to-nearest per (output row, group of input channels named by g_idx)."""
    out_features = weight.shape[0]
    groups = int(g_idx.max()) + 1
    maxq = 2**bits - 1
    q = torch.zeros(weight.shape, dtype=torch.int64)
    zeros = torch.zeros(groups, out_features, dtype=torch.int64)
    scales = torch.zeros(groups, out_features, dtype=torch.float16)
    for group in range(groups):
        channels = (g_idx == group).nonzero().flatten()
        w = weight[:, channels].float()
        low = w.amin(1).clamp(max=0)
        high = w.amax(1).clamp(min=0)
        if symmetric:
            high = torch.maximum(low.abs(), high)
            low = -high
        scale = ((high - low) / maxq).clamp(min=1e-6).to(torch.float16)
        zero = torch.full_like(low, (maxq + 1) // 2) if symmetric else torch.round(-low / scale.float())
        codes = torch.clamp(torch.round(w / scale.float()[:, None]) + zero[:, None], 0, maxq)
        q[:, channels] = codes.to(torch.int64)
        zeros[group], scales[group] = zero.to(torch.int64), scale
    return QuantizedLinear(q, zeros, scales, g_idx.to(torch.int32))


def _int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> int32 with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """[n, out] 4-bit values -> int32 [n, out / 8], AutoAWQ's interleaved order."""
    words = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for slot, column in enumerate(AWQ_ORDER):
        words |= values[:, column::8].to(torch.int64) << (4 * slot)
    return _int32(words)


def pack_gptq_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[in, out] values -> int32 [in * bits / 32, out]: consecutive input rows in one word."""
    per_word = 32 // bits
    words = torch.zeros(values.shape[0] // per_word, values.shape[1], dtype=torch.int64)
    for i in range(per_word):
        words |= values[i::per_word].to(torch.int64) << (bits * i)
    return _int32(words)


def pack_gptq_columns(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[groups, out] values -> int32 [groups, out * bits / 32]: consecutive columns in one word."""
    return pack_gptq_rows(values.t(), bits).t().contiguous()


def awq_tensors(layer: QuantizedLinear) -> dict[str, torch.Tensor]:
    return {
        "qweight": pack_awq(layer.q.t()),
        "qzeros": pack_awq(layer.zero),
        "scales": layer.scale.contiguous(),
    }


def gptq_tensors(layer: QuantizedLinear, bits: int, v1: bool) -> dict[str, torch.Tensor]:
    # v1 stores zero - 1: a zero point of 0 would read back as 2^bits (AutoGPTQ's format bug, fixed by v2).
    if v1 and bool((layer.zero == 0).any()):
        raise ValueError("a zero point of 0 cannot be stored in the v1 gptq format")
    stored_zero = (layer.zero - 1) & (2**bits - 1) if v1 else layer.zero
    return {
        "qweight": pack_gptq_rows(layer.q.t(), bits),
        "qzeros": pack_gptq_columns(stored_zero, bits),
        "scales": layer.scale.contiguous(),
        "g_idx": layer.g_idx.contiguous(),
    }


def awq_config(group_size: int, not_converted: tuple[str, ...] = ()) -> dict:
    return {"quant_method": "awq", "zero_point": True, "group_size": group_size, "bits": 4, "version": "gemm",
            "modules_to_not_convert": list(not_converted) or None}  # fmt: skip


def gptq_config(bits: int, group_size: int, symmetric: bool, desc_act: bool, fmt: str) -> dict:
    if fmt == "gptq":  # AutoGPTQ's BaseQuantizeConfig.to_dict
        return {"bits": bits, "group_size": group_size, "damp_percent": 0.01, "desc_act": desc_act,
                "static_groups": False, "sym": symmetric, "true_sequential": True, "model_name_or_path": None,
                "model_file_base_name": None, "is_marlin_format": False, "quant_method": "gptq"}  # fmt: skip
    # GPTQModel's QuantizeConfig.to_dict
    return {"bits": bits, "group_size": group_size, "desc_act": desc_act, "lm_head": False, "quant_method": "gptq",
            "format": fmt, "checkpoint_format": fmt, "pack_dtype": "int32", "sym": symmetric,
            "meta": {"quantizer": ["gptqmodel:5.0.0"], "static_groups": False, "true_sequential": True,
                     "damp_percent": 0.05, "mse": 0.0}}  # fmt: skip


def act_orders(model: transformers.LlamaForCausalLM, seed: int) -> dict[str, torch.Tensor]:
    """One random input-channel order per (layer, input): standing for GPTQ's descending Hessian diagonal."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"attn": model.config.hidden_size, "o": model.config.hidden_size, "mlp": model.config.hidden_size,
             "down": model.config.intermediate_size}  # fmt: skip
    orders = {}
    for index in range(model.config.num_hidden_layers):
        for kind, size in sizes.items():
            orders[f"{index}.{kind}"] = torch.randperm(size, generator=generator)
    return orders


def quantize_state_dict(
    state: dict[str, torch.Tensor],
    method: str,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    fmt: str = "gptq",
    orders: dict[str, torch.Tensor] | None = None,
    not_converted: tuple[str, ...] = (),
    quantized: tuple[str, ...] = QUANTIZED,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(checkpoint tensors, reference weights) of a Hugging Face state dict: each `weight` of a layer whose last name
    is in `quantized` (and not in `not_converted`) quantized with `method` and packed, every other tensor float16;
    the reference holds each quantized weight dequantized (float32) and the rest as saved. `orders` (act order,
    Llama layers only): input-channel order per (layer index, input kind)."""
    tensors: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        module, _, part = name.rpartition(".")
        leaf = module.rpartition(".")[2]
        if leaf not in quantized or part != "weight" or leaf in not_converted:
            tensors[name] = value.to(torch.float16).contiguous()
            reference[name] = tensors[name].float()
            continue
        cols = value.shape[1]
        group = cols if group_size == -1 else group_size
        g_idx = torch.arange(cols) // group
        if orders:
            order = orders[f"{module.split('.')[2]}.{INPUT_OF[leaf]}"]
            g_idx = torch.empty(cols, dtype=torch.int64)
            g_idx[order] = torch.arange(cols) // group
        layer = quantize_rtn(value, g_idx, bits, symmetric)
        parts = awq_tensors(layer) if method == "awq" else gptq_tensors(layer, bits, v1=fmt == "gptq")
        for part_name, tensor in parts.items():
            tensors[f"{module}.{part_name}"] = tensor
        reference[name] = layer.dequantize()
    return tensors, reference


def write_checkpoint(
    folder: pathlib.Path,
    method: str,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = False,
    desc_act: bool = False,
    fmt: str = "gptq",
    seed: int = 0,
    not_converted: tuple[str, ...] = (),
) -> tuple[pathlib.Path, dict[str, torch.Tensor]]:
    """A tiny Llama quantized with `method` ("awq" or "gptq") saved in `folder` (config.json, model.safetensors);
    returns the folder and the reference weights: each quantized layer's `weight` dequantized (float32) and
    every other tensor as saved (float16), keyed like the Hugging Face model's state dict. Layers named in
    `not_converted` (AWQ's modules_to_not_convert) stay float16."""
    model = tiny_llama(seed)
    orders = act_orders(model, seed + 1) if desc_act else {}
    tensors, reference = quantize_state_dict(
        model.state_dict(), method, bits, group_size, symmetric, fmt, orders, not_converted
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["torch_dtype"] = "float16"
    config["quantization_config"] = (
        awq_config(group_size, not_converted)
        if method == "awq"
        else gptq_config(bits, group_size, symmetric, desc_act, fmt)
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder, reference


def reference_model(
    folder: pathlib.Path, reference: dict[str, torch.Tensor]
) -> transformers.LlamaForCausalLM:
    """transformers' Llama (float32) holding the reference weights: what the checkpoint computes."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).float().eval()
    model.load_state_dict(reference)
    return model
