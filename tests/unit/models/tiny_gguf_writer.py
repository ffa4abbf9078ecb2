"""Tiny GGUF checkpoints written with the real `gguf` writer, laid out the way llama.cpp's converter does it
(Q/K rows of the llama architecture permuted), plus the values a correct loader must give back."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np
from kquant_writer import quantize_q4_k, quantize_q6_k

TINY_HIDDEN = 64  # a multiple of 32: every quantized row holds whole blocks
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_HEAD_DIM = TINY_HIDDEN // TINY_HEADS
# Qwen3 files carry a head size of their own (attention.key_length); every released Qwen3 uses 128, and so does
# transformers' GGUF loader (it does not read key_length), so the tiny qwen3 does too.
QWEN3_HEAD_DIM = 128
TINY_LAYERS = 2
TINY_FFN = 128
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_alphabet() -> list[str]:
    """GPT-2's byte → printable character table (the vocabulary of a merge-free byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for _, code in sorted(zip(printable, codes))]


# One merge ("Ġ" is the byte-level spelling of a space), as a file without merges is not a valid BPE file.
TINY_MERGES = ["Ġ t"]
TINY_TOKENS = SPECIAL_TOKENS + byte_level_alphabet() + ["Ġt"]
TINY_VOCAB = len(TINY_TOKENS)


def permute_like_llama_cpp(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter layout for llama Q/K: within each head, interleave the two rotary halves."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def quantize(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """The gguf package's quantizer, or ours for the K-quants it lacks (kquant_writer.py)."""
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(values)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        return quantize_q6_k(values)
    return gguf.quants.quantize(values, qtype)


@dataclass
class TinyGGUF:
    path: pathlib.Path
    architecture: str
    originals: dict[str, np.ndarray]  # HF name → float32 weights before quantization
    expected: dict[str, np.ndarray]  # HF name → exact float32 values the loader must produce
    tensor_types: dict[str, gguf.GGMLQuantizationType] = field(default_factory=dict)


def _hf_weights(
    architecture: str, tied: bool, rng: np.random.Generator, hidden: int, ffn: int
) -> dict[str, np.ndarray]:
    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    weights = {
        "model.embed_tokens.weight": normal(TINY_VOCAB, hidden),
        "model.norm.weight": normal(hidden),
    }
    if not tied:
        weights["lm_head.weight"] = normal(TINY_VOCAB, hidden)
    head_dim = QWEN3_HEAD_DIM if architecture == "qwen3" else hidden // TINY_HEADS
    q_rows, kv_rows = TINY_HEADS * head_dim, TINY_KV_HEADS * head_dim
    for layer in range(TINY_LAYERS):
        prefix = f"model.layers.{layer}"
        weights |= {
            f"{prefix}.input_layernorm.weight": normal(hidden),
            f"{prefix}.post_attention_layernorm.weight": normal(hidden),
            f"{prefix}.self_attn.q_proj.weight": normal(q_rows, hidden),
            f"{prefix}.self_attn.k_proj.weight": normal(kv_rows, hidden),
            f"{prefix}.self_attn.v_proj.weight": normal(kv_rows, hidden),
            f"{prefix}.self_attn.o_proj.weight": normal(hidden, q_rows),
            f"{prefix}.mlp.gate_proj.weight": normal(ffn, hidden),
            f"{prefix}.mlp.up_proj.weight": normal(ffn, hidden),
            f"{prefix}.mlp.down_proj.weight": normal(hidden, ffn),
        }
        if architecture == "qwen3":
            weights |= {
                f"{prefix}.self_attn.q_norm.weight": normal(head_dim) + 1,
                f"{prefix}.self_attn.k_norm.weight": normal(head_dim) + 1,
            }
        if architecture == "qwen2":
            weights |= {
                f"{prefix}.self_attn.q_proj.bias": normal(q_rows),
                f"{prefix}.self_attn.k_proj.bias": normal(kv_rows),
                f"{prefix}.self_attn.v_proj.bias": normal(kv_rows),
            }
    return weights


# Written independently of the loader under test: the names llama.cpp gives each HF parameter.
_HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    stem, kind = hf_name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        layer, part = stem[len("model.layers.") :].split(".", 1)
        return f"blk.{layer}.{_HF_TO_GGUF[part]}.{kind}"
    return f"{_HF_TO_GGUF[stem]}.{kind}"


def write_tiny_gguf(
    path: pathlib.Path,
    architecture: str = "llama",
    tensor_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    tied: bool = True,
    model_name: str = "tiny",
    metadata: Callable[[gguf.GGUFWriter], None] | None = None,
    extra_tensors: dict[str, tuple[np.ndarray, Any]] | None = None,
    seed: int = 0,
    type_overrides: dict[str, gguf.GGMLQuantizationType] | None = None,
    hidden: int = TINY_HIDDEN,
    ffn: int = TINY_FFN,
) -> TinyGGUF:
    """A 2-layer model; 2-D weights in `tensor_type` (or the type `type_overrides` gives that GGUF tensor name),
    1-D ones in F32 (as llama.cpp stores norms and biases). K-quant types need `hidden` and `ffn` multiples of
    256."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(model_name)
    writer.add_block_count(TINY_LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if architecture == "llama":
        writer.add_rope_dimension_count(hidden // TINY_HEADS)
    if architecture == "qwen3":
        writer.add_key_length(QWEN3_HEAD_DIM)
        writer.add_value_length(QWEN3_HEAD_DIM)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TINY_TOKENS)
    normal_count = len(TINY_TOKENS) - len(SPECIAL_TOKENS)
    writer.add_token_types(
        [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS) + [gguf.TokenType.NORMAL] * normal_count
    )
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    if metadata is not None:
        metadata(writer)

    tiny = TinyGGUF(path, architecture, {}, {})
    for name, original in _hf_weights(architecture, tied, np.random.default_rng(seed), hidden, ffn).items():
        qtype = tensor_type if original.ndim == 2 else gguf.GGMLQuantizationType.F32
        qtype = (type_overrides or {}).get(gguf_name(name), qtype)
        stored = original
        if architecture == "llama" and ".q_proj." in name:
            stored = permute_like_llama_cpp(original, TINY_HEADS)
        elif architecture == "llama" and ".k_proj." in name:
            stored = permute_like_llama_cpp(original, TINY_KV_HEADS)
        writer.add_tensor(gguf_name(name), quantize(stored, qtype), raw_dtype=qtype)
        tiny.originals[name] = original
        # Quantization works on blocks within a row, so it commutes with the row permutation: the value a
        # correct loader yields is the HF-layout weight quantized and dequantized, with no permutation at all.
        tiny.expected[name] = gguf.quants.dequantize(quantize(original, qtype), qtype)
        tiny.tensor_types[name] = qtype
    for name, (data, raw_dtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tiny


def write_transformers_gguf(
    path: pathlib.Path,
    architecture: str,
    model: Any,
    metadata: Callable[[gguf.GGUFWriter], None] | None = None,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    permute_qk: bool = False,
    norms_plus_one: bool = False,
) -> None:
    """A transformers decoder's weights as llama.cpp's converter writes `architecture`: the shared shape metadata,
    `metadata(writer)` for the architecture's own keys, the gguf package's tensor names, Q/K rows permuted
    (`permute_qk`, llama.cpp's LlamaModel and its subclasses), norms stored as 1 + weight (`norms_plus_one`,
    Gemma), 2-D tensors in `qtype`, a tied LM head left out."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if hasattr(config, "rms_norm_eps"):  # LayerNorm models (Cohere) write their epsilon in `metadata`
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if metadata is not None:
        metadata(writer)
    arch_enum = gguf.MODEL_ARCH[architecture.upper().replace("-", "_")]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue
        kind_suffix = "bias" if name.endswith(".bias") else "weight"
        stem = name.removesuffix(f".{kind_suffix}")
        values = tensor.numpy()
        if permute_qk and stem.endswith("q_proj"):
            values = permute_like_llama_cpp(values, config.num_attention_heads)
        elif permute_qk and stem.endswith("k_proj"):
            values = permute_like_llama_cpp(values, config.num_key_value_heads)
        if norms_plus_one and stem.endswith("norm"):
            values = values + 1.0
        kind = qtype if values.ndim == 2 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(f"{names.get_name(stem)}.{kind_suffix}", quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
