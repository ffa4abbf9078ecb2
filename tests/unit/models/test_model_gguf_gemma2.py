"""Gemma 2 GGUF files as llama.cpp's converter writes them (the `gguf` package's tensor map for gemma2, every norm
stored as 1 + weight, the soft-caps and sliding window in metadata, no query_pre_attn_scalar: llama.cpp uses the
head size below 27B), written from a tiny transformers checkpoint with the real `gguf` writer: in float32 the loaded
model gives transformers' logits; Q8_0 matrices are kept in their blocks and follow the same file dequantized; the
config follows llama.cpp's rules (even layers local, the 27B's attention scale)."""

from __future__ import annotations

import pathlib
import sys

import gguf
import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from tiny_gguf_writer import write_transformers_gguf

from pagedserve.kube.model_spec import gguf_layer_windows
from pagedserve.models.gguf_config import build_gguf_config
from pagedserve.models.llama import attention_window

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tiny_models import randomize_gemma_norms  # noqa: E402

Q = gguf.GGMLQuantizationType


def tiny_model(seed: int = 0, layers: int = 4) -> transformers.Gemma2ForCausalLM:
    config = transformers.Gemma2Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=5,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, max_position_embeddings=256,
        initializer_range=0.2, rms_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.Gemma2ForCausalLM(config).to(torch.float32).eval()
    randomize_gemma_norms(model, seed)
    return model


def write_gemma2_gguf(path: pathlib.Path, model, qtype: Q) -> None:
    config = model.config

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_sliding_window(config.sliding_window)
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)

    write_transformers_gguf(path, "gemma2", model, metadata, qtype, norms_plus_one=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-gemma2")
    model = tiny_model()
    for qtype in (Q.F32, Q.Q8_0):
        write_gemma2_gguf(root / f"{qtype.name}.gguf", model, qtype)
    return model, root / "F32.gguf", root / "Q8_0.gguf"


TOKENS = torch.randint(5, 96, (22,), generator=torch.Generator().manual_seed(2)).tolist()


def test_float_file_gives_transformers_logits(files) -> None:
    model, f32, _ = files
    config, ours = load_model(f32, keep_quantized=False)
    assert isinstance(config, transformers.Gemma2Config)
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (2.0, 3.0)
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2
    # `pagedserve plan` reads the same windows from the file (its KV cache groups count as the engine's).
    windows = tuple(attention_window(config, i) for i in range(4))
    assert gguf_layer_windows(gguf.GGUFReader(str(f32))) == windows and windows[0] and windows[1] is None
    got = logits_of(ours, config, TOKENS, [12, 1, 1, 1, 1, 6])
    with torch.no_grad():
        expected = model(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_q8_0_blocks_are_kept_and_follow_the_dequantized_file(files) -> None:
    _, _, q8 = files
    config, kept = load_model(q8, keep_quantized=True)
    _, dequantized = load_model(q8, keep_quantized=False)
    assert kept.model.layers[0].self_attn.qkv_proj.weight_type == int(Q.Q8_0)
    got = logits_of(kept, config, TOKENS, [12, 1, 1, 1, 1, 6])
    expected = logits_of(dequantized, config, TOKENS, [12, 1, 1, 1, 1, 6])
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_the_27b_attention_scale(tmp_path) -> None:
    """llama.cpp: 46 layers (the 27B) scale by hidden / heads, every other size by the head size."""
    write_gemma2_gguf(tmp_path / "deep.gguf", tiny_model(layers=46), Q.F32)
    config = build_gguf_config(gguf.GGUFReader(str(tmp_path / "deep.gguf")), tmp_path / "deep.gguf")
    assert config.query_pre_attn_scalar == 64 // 4
