"""GGUF tensors → Hugging Face parameter names and float tensors.

Matrices of the types the engine multiplies in their blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K: layers/gguf_quant.py)
can be kept as they are (`keep_quantized`); other quantized types are dequantized with the `gguf` package's own
kernels; F32/F16/BF16 keep their dtype. llama.cpp's
converter reorders the rows of Q and K of the `llama`, `granite` and `smollm3` architectures (each head's rotary pairs interleaved instead
of split in halves); that is undone here so that values equal the original checkpoint's.
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Iterator

import gguf
import numpy as np
import torch
import transformers

from pagedserve.layers.gguf_quant import KEPT_BLOCKS, QuantizedTensor
from pagedserve.models.weight_progress import StoredTensor

_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",  # qwen3
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # Mixture of experts (Mixtral as llama, qwen2moe, qwen3moe): the router and Qwen2-MoE's shared expert.
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
# Where an architecture names a block tensor differently.
_ARCH_BLOCK_TENSORS = {
    # Phi-3 keeps q|k|v and gate|up fused, as its checkpoints do (models/phi3.py splits them)
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
    "gemma3": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_ARCH_BLOCK_TENSORS["gemma2"] = _ARCH_BLOCK_TENSORS["gemma3"]
# OLMo 2: norms after the blocks (its q/k norms span whole projections, under Qwen3's per-head names).
_ARCH_BLOCK_TENSORS["olmo2"] = {
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# GLM-4-0414: gate|up fused (and q|k|v in some files), split by models/glm.py; a norm after each block.
_ARCH_BLOCK_TENSORS["glm4"] = {
    "attn_qkv": "self_attn.qkv_proj",
    "ffn_up": "mlp.gate_up_proj",
    "post_attention_norm": "post_self_attn_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_mlp_layernorm",
}
# llama.cpp's converter stores Gemma's norm weights as 1 + weight (its RMSNorm multiplies by the weight alone);
# the model adds the 1 itself (layers/layernorm.py::GemmaRMSNorm).
_NORMS_PLUS_ONE = frozenset({"gemma2", "gemma3"})
# All experts of a layer in one 3-D tensor [experts, rows, columns]; the model keeps one layer per expert.
_EXPERT_TENSORS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
# Folded into the config (rope scaling) rather than loaded as a parameter.
_CONFIG_ONLY_TENSORS = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}
# llama.cpp's converter permutes Q and K rows for these (its LlamaModel and subclasses: Granite's, SmolLM3's).
_PERMUTED = frozenset({"llama", "granite", "smollm3"})
_BLOCK_NAME = re.compile(r"blk\.(?P<layer>\d+)\.(?P<part>\w+)\.(?P<kind>weight|bias)")
_GLOBAL_NAME = re.compile(r"(?P<part>\w+)\.(?P<kind>weight|bias)")
_UNQUANTIZED = {
    gguf.GGMLQuantizationType.F32: torch.float32,
    gguf.GGMLQuantizationType.F16: torch.float16,
    gguf.GGMLQuantizationType.BF16: torch.bfloat16,
}


def hf_tensor_name(gguf_name: str, architecture: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor; None for tensors that carry config only. ValueError if unknown."""
    if gguf_name in _CONFIG_ONLY_TENSORS:
        return None
    if match := _BLOCK_NAME.fullmatch(gguf_name):
        part = _ARCH_BLOCK_TENSORS.get(architecture, {}).get(match["part"]) or _BLOCK_TENSORS.get(
            match["part"]
        )
        if part is not None:
            return f"model.layers.{match['layer']}.{part}.{match['kind']}"
        if (expert_part := _EXPERT_TENSORS.get(match["part"])) and match["kind"] == "weight":
            return f"model.layers.{match['layer']}.mlp.experts.{{expert}}.{expert_part}.weight"
    elif match := _GLOBAL_NAME.fullmatch(gguf_name):
        part = _GLOBAL_TENSORS.get(match["part"])
        if part is not None:
            return f"{part}.{match['kind']}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no counterpart in the supported model architectures")


@functools.cache
def is_supported_tensor_type(tensor_type: gguf.GGMLQuantizationType) -> bool:
    """Float types, plus every quantized type the installed `gguf` package can dequantize (probed once)."""
    if tensor_type in _UNQUANTIZED:
        return True
    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    if block_size == 1:  # integer / f64 types: not model weights
        return False
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), tensor_type)
    except NotImplementedError:
        return False
    return True


def check_gguf_tensors(reader: gguf.GGUFReader, path: pathlib.Path, architecture: str) -> None:
    """Fail at resolve time, before any weight is read, on tensors this loader cannot turn into HF weights."""
    for tensor in reader.tensors:
        hf_tensor_name(tensor.name, architecture)
        if not is_supported_tensor_type(tensor.tensor_type):
            raise ValueError(
                f"GGUF file {path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which the installed "
                f"gguf package (version {_gguf_version()}) cannot dequantize"
            )


def _gguf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("gguf")


def tensor_to_torch(tensor: gguf.ReaderTensor) -> torch.Tensor:
    """A writable torch copy in row-major HF layout: quantized → float32, F32/F16/BF16 unchanged."""
    # GGUF lists dimensions fastest-first; numpy/torch want them slowest-first.
    shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
    tensor_type = tensor.tensor_type
    if tensor_type == gguf.GGMLQuantizationType.BF16:
        raw = np.array(tensor.data, copy=True).view(np.int16).reshape(shape)
        return torch.from_numpy(raw).view(torch.bfloat16)
    if tensor_type in _UNQUANTIZED:
        return torch.from_numpy(np.array(tensor.data, copy=True).reshape(shape))
    values = gguf.quants.dequantize(tensor.data, tensor_type)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))


def unpermute_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's Q/K row permutation: per head, rows come as (pair, 2) and go back to (2, pair)."""
    rows = weight.shape[0]
    if rows % (2 * num_heads) != 0:
        raise ValueError(f"cannot un-permute {rows} rows over {num_heads} heads")
    grouped = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape).contiguous()


def kept_blocks(tensor: gguf.ReaderTensor) -> QuantizedTensor | None:
    """A matrix of a type the engine multiplies in its blocks, as those blocks (a copy); None for other tensors."""
    if int(tensor.tensor_type) not in KEPT_BLOCKS or len(tensor.shape) != 2:
        return None
    cols, rows = (int(dim) for dim in tensor.shape.tolist())
    data = torch.from_numpy(np.array(tensor.data, dtype=np.uint8, copy=True).reshape(rows, -1))
    return QuantizedTensor(data, int(tensor.tensor_type), (rows, cols))


def iter_gguf_weights(
    reader: gguf.GGUFReader,
    architecture: str,
    config: transformers.PretrainedConfig,
    path: pathlib.Path,
    keep_quantized: bool = False,
) -> Iterator[StoredTensor]:
    """One tensor at a time, dequantized only when reached: the loader itself never holds more than one."""
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name, architecture)
        if name is None:
            continue
        if "{expert}" in name:
            yield from _split_experts(tensor, name, keep_quantized, path)
            continue
        blocks = kept_blocks(tensor) if keep_quantized else None
        if blocks is not None:
            if architecture in _PERMUTED and (".self_attn.q_proj." in name or ".self_attn.k_proj." in name):
                heads = config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads
                blocks = QuantizedTensor(unpermute_rope_rows(blocks.data, heads), blocks.qtype, blocks.shape)
            yield StoredTensor(name, blocks, int(tensor.n_bytes), path.name)
            continue
        weight = tensor_to_torch(tensor)
        if architecture in _NORMS_PLUS_ONE and name.endswith("norm.weight"):
            weight = weight.float() - 1.0
        if name.endswith(".shared_expert_gate.weight") and weight.dim() == 1:
            weight = weight.unsqueeze(0)  # llama.cpp stores the [1, hidden] gate as a vector
        if architecture in _PERMUTED:
            if ".self_attn.q_proj." in name:
                weight = unpermute_rope_rows(weight, config.num_attention_heads)
            elif ".self_attn.k_proj." in name:
                weight = unpermute_rope_rows(weight, config.num_key_value_heads)
        yield StoredTensor(name, weight, int(tensor.n_bytes), path.name)


def _split_experts(
    tensor: gguf.ReaderTensor, name_pattern: str, keep_quantized: bool, path: pathlib.Path
) -> Iterator[StoredTensor]:
    """A stacked expert tensor as one matrix per expert: in its blocks (each expert's rows are a contiguous run
    of whole rows) or as float values."""
    if len(tensor.shape) != 3:
        raise ValueError(
            f"GGUF file {path}: {tensor.name} should hold [experts, rows, columns], got {tensor.shape}"
        )
    cols, rows, experts = (int(dim) for dim in tensor.shape.tolist())
    share = int(tensor.n_bytes) // experts
    if keep_quantized and int(tensor.tensor_type) in KEPT_BLOCKS:
        blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(experts, rows, -1)
        for expert in range(experts):
            data = torch.from_numpy(np.array(blocks[expert], copy=True))
            quantized = QuantizedTensor(data, int(tensor.tensor_type), (rows, cols))
            yield StoredTensor(name_pattern.format(expert=expert), quantized, share, path.name)
        return
    values = tensor_to_torch(tensor)
    for expert in range(experts):
        yield StoredTensor(name_pattern.format(expert=expert), values[expert], share, path.name)


def gguf_tensor_bytes(reader: gguf.GGUFReader) -> int:
    return sum(int(tensor.n_bytes) for tensor in reader.tensors)
