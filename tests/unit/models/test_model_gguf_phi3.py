"""Phi-3 / Phi-4 GGUF files as llama.cpp's converter writes them (tensor names from the `gguf` package's own map:
q|k|v fused in attn_qkv, gate|up in ffn_up; a sliding window of 0 for none), written here from a tiny transformers
checkpoint with the real `gguf` writer. In float32 the loaded model gives transformers' logits; Q8_0 blocks are
split by rows and kept; a Phi-4-mini-shaped file (LongRoPE factor tensors, rotary on 12 of 16 dims) gives
transformers' logits past its original context."""

from __future__ import annotations

import math
import pathlib

import gguf
import numpy as np
import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from test_model_phi3 import longrope, phi3_config

Q = gguf.GGMLQuantizationType


def write_phi3_gguf(path: pathlib.Path, model, qtype: Q) -> None:
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters
    rope_dims = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(rope_dims)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_sliding_window(config.sliding_window or 0)  # llama.cpp's converter: 0 for none (Phi-4)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, config.num_hidden_layers)
    for name, values in model.state_dict().items():
        values = values.numpy()
        kind = qtype if values.ndim == 2 else Q.F32
        stem = name.removesuffix(".weight")
        writer.add_tensor(
            f"{names.get_name(stem)}.weight", gguf.quants.quantize(values, kind), raw_dtype=kind
        )
    if (
        rope.get("rope_type") == "longrope"
    ):  # llama.cpp's converter: the factor sets as tensors, the cos/sin factor
        scale = config.max_position_embeddings / config.original_max_position_embeddings
        writer.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(config.original_max_position_embeddings))
        )
        writer.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-phi3")
    torch.manual_seed(2)
    made = {}
    phi4_mini = {"rope_scaling": longrope(0.75, seed=3), "original_max_position_embeddings": 12}
    for kind, overrides in (("phi4", {}), ("mini4k", {"sliding_window": 5}), ("phi4-mini", phi4_mini)):
        model = transformers.Phi3ForCausalLM(phi3_config(**overrides)).to(torch.float32).eval()
        for qtype in (Q.F32, Q.Q8_0):
            write_phi3_gguf(root / f"{kind}-{qtype.name}.gguf", model, qtype)
        made[kind] = (model, root / f"{kind}-F32.gguf", root / f"{kind}-Q8_0.gguf")
    return made


TOKENS = torch.randint(3, 97, (17,), generator=torch.Generator().manual_seed(4)).tolist()


@pytest.mark.parametrize("kind", ["phi4", "mini4k", "phi4-mini"])
def test_float_file_gives_transformers_logits(files, kind) -> None:
    model, f32, _ = files[kind]
    config, ours = load_model(f32, keep_quantized=False)
    assert config.sliding_window == (5 if kind == "mini4k" else None)
    got = logits_of(ours, config, TOKENS, [9, 1, 1, 6])
    with torch.no_grad():
        expected = model(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_q8_0_fused_rows_are_split_and_kept(files) -> None:
    _, _, q8 = files["mini4k"]
    config, kept = load_model(q8, keep_quantized=True)
    _, dequantized = load_model(q8, keep_quantized=False)
    layer = kept.model.layers[1]
    assert layer.self_attn.qkv_proj.weight_type == layer.mlp.gate_up_proj.weight_type == int(Q.Q8_0)
    got = logits_of(kept, config, TOKENS, [9, 1, 1, 6])
    expected = logits_of(dequantized, config, TOKENS, [9, 1, 1, 6])
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
