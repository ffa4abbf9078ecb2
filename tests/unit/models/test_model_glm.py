"""GLM-4 (`GlmForCausalLM`, `Glm4ForCausalLM`): tiny random checkpoints saved by transformers (biases on q/k/v,
gate|up fused, rotary on half of each head with interleaved pairs; GLM-4-0414's norms after each block, randomized
so they move the logits) give transformers' logits (float32, 1e-4) over whole prompts, chunked prefills and decode
steps; the engine serves them (greedy tokens and logprobs equal transformers') at TP=1 and TP=2 with decode graphs;
LoRA adapters and quantized checkpoints are refused by name."""

from __future__ import annotations

import logging
import pathlib
import sys

import gguf
import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from tiny_gguf_writer import write_transformers_gguf

from pagedserve.models.interleaved_rope import half_split_order, reorder_rotary_rows

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from tests.tiny_models import bundled_tokenizer  # noqa: E402


def write_tiny_glm(folder: pathlib.Path, version: int, vocab_size: int | None = None, seed: int = 0):
    tokenizer = bundled_tokenizer() if vocab_size is None else None
    config_class, model_class, architecture = (
        (transformers.Glm4Config, transformers.Glm4ForCausalLM, "Glm4ForCausalLM")
        if version == 4
        else (transformers.GlmConfig, transformers.GlmForCausalLM, "GlmForCausalLM")
    )
    config = config_class(
        vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        initializer_range=0.2, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=[4, 1], ids=["glm4-0414", "glm4-9b-hf"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"glm{request.param}")
    return folder, write_tiny_glm(folder, request.param, vocab_size=97, seed=request.param)


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    assert reference.config.rope_parameters["partial_rotary_factor"] == 0.5
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == reference.config.architectures[0]
    tokens = torch.randint(3, 97, (sum(chunks),), generator=torch.Generator().manual_seed(6)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, chunks), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0])
def test_gguf_glm4_file_follows_transformers(tmp_path, qtype):
    """llama.cpp's glm4 layout: the checkpoint's q/k rows as they are (it rotates adjacent pairs), gate|up fused in
    ffn_up, the post-block norms under post_attention_norm / post_ffw_norm, the rotary width in
    rope.dimension_count; Q8_0 blocks kept, their rows reordered as the float rows are."""
    reference = write_tiny_glm(tmp_path / "hf", 4, vocab_size=97, seed=8)

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(reference.config.rope_parameters["rope_theta"])
        writer.add_rope_dimension_count(8)  # half of each 16-dim head

    write_transformers_gguf(tmp_path / "glm4.gguf", "glm4", reference, metadata, qtype)
    tokens = torch.randint(3, 97, (19,), generator=torch.Generator().manual_seed(7)).tolist()
    config, ours = load_model(tmp_path / "glm4.gguf", keep_quantized=False)
    assert type(ours).__name__ == "Glm4ForCausalLM" and config.attention_bias
    got = logits_of(ours, config, tokens, [12, 1, 6])
    if qtype == gguf.GGMLQuantizationType.F32:
        with torch.no_grad():
            expected = reference(torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    else:  # the blocks kept follow the same file dequantized (16-bit activations: docs/architecture.md, "GGUF GEMVs")
        config, kept = load_model(tmp_path / "glm4.gguf", keep_quantized=True)
        torch.testing.assert_close(logits_of(kept, config, tokens, [12, 1, 6]), got, atol=2e-2, rtol=2e-2)


def test_interleaved_pairs_become_split_halves():
    """Rotating interleaved pairs (GLM's layout) equals rotating Llama's halves of the reordered dims."""
    head_dim, rotary_dim = 8, 4
    order = half_split_order(head_dim, rotary_dim)
    assert order.tolist() == [0, 2, 1, 3, 4, 5, 6, 7]
    x = torch.randn(head_dim)
    angle = torch.tensor([0.3, 1.1])  # one per pair
    cos, sin = angle.cos(), angle.sin()
    interleaved = x.clone()
    interleaved[0:4:2] = x[0:4:2] * cos - x[1:4:2] * sin
    interleaved[1:4:2] = x[1:4:2] * cos + x[0:4:2] * sin
    y = x[order]
    halves = y.clone()
    halves[:2] = y[:2] * cos - y[2:4] * sin
    halves[2:4] = y[2:4] * cos + y[:2] * sin
    torch.testing.assert_close(halves, interleaved[order])
    # A checkpoint's q/k rows are reordered head by head; anything else passes through.
    weights = [
        ("model.layers.0.self_attn.q_proj.weight", torch.arange(16.0)[:, None]),
        ("x.weight", torch.ones(1)),
    ]
    (_, q), (_, other) = reorder_rotary_rows(weights, head_dim, rotary_dim)
    assert q[:, 0].tolist() == [0, 2, 1, 3, 4, 5, 6, 7, 8, 10, 9, 11, 12, 13, 14, 15] and other.tolist() == [
        1.0
    ]
    with pytest.raises(ValueError, match="quantized checkpoints with interleaved rotary pairs"):
        list(
            reorder_rotary_rows([("a.self_attn.k_proj.qweight", torch.zeros(4, 2, dtype=torch.int32))], 8, 4)
        )


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 1])
def test_engine_matches_transformers(tmp_path, version, caplog):
    from tests.integration.test_tensor_parallel import _tp2_matches_transformers

    write_tiny_glm(tmp_path, version, seed=3)
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(tmp_path, tensor_parallel_size=1)
    assert "decode graphs: batch 1 captured" in caplog.text  # the reordering keeps every step a C call
    _tp2_matches_transformers(tmp_path)


@pytest.mark.slow
def test_lora_is_refused_by_name(tmp_path):
    from pagedserve import LLM

    write_tiny_glm(tmp_path, 4, seed=4)
    with pytest.raises(ValueError, match="LoRA adapters on Glm4ForCausalLM are not supported"):
        LLM(str(tmp_path), dtype="float32", kv_cache_memory_bytes=2**22, max_model_len=64, enable_lora=True)
