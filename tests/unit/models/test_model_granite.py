"""IBM Granite 3.x (`GraniteForCausalLM`): a tiny random checkpoint saved by transformers, with its four scalars
away from 1 (embeddings x 12, attention scale 0.03, residual x 0.22, logits / 8), gives transformers' logits
(float32, 1e-4) over whole prompts, chunked prefills and decode steps; a GGUF file written the way llama.cpp's
converter writes Granite (the scalars as granite.* metadata, Q and K rows permuted as Llama's) gives the same; the
whole engine serves it (greedy tokens and logprobs equal transformers', decode steps eager, TP=2)."""

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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from tests.tiny_models import bundled_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType


def write_tiny_granite(folder: pathlib.Path, vocab_size: int | None = None, seed: int = 0):
    tokenizer = bundled_tokenizer() if vocab_size is None else None
    config = transformers.GraniteConfig(
        vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, embedding_multiplier=12.0,
        attention_multiplier=0.03, residual_multiplier=0.22, logits_scaling=8.0, tie_word_embeddings=True,
        initializer_range=0.2, rms_norm_eps=1e-6, pad_token_id=0,
    )  # fmt: skip
    config.architectures = ["GraniteForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.GraniteForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


def write_granite_gguf(path: pathlib.Path, model) -> None:
    config = model.config

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_embedding_scale(config.embedding_multiplier)
        writer.add_residual_scale(config.residual_multiplier)
        writer.add_attention_scale(config.attention_multiplier)
        writer.add_logit_scale(config.logits_scaling)

    write_transformers_gguf(path, "granite", model, metadata, permute_qk=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("granite")
    return folder, write_tiny_granite(folder, vocab_size=97, seed=1)


TOKENS = torch.randint(3, 97, (19,), generator=torch.Generator().manual_seed(4)).tolist()


def reference_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == "GraniteForCausalLM"
    torch.testing.assert_close(
        logits_of(ours, config, TOKENS, chunks), reference_logits(reference, TOKENS), atol=1e-4, rtol=1e-4
    )


def test_the_scalars_change_the_logits(checkpoint):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    ours.embedding_multiplier = ours.logits_scaling = 1.0
    assert not torch.allclose(
        logits_of(ours, config, TOKENS, [19]), reference_logits(reference, TOKENS), atol=1e-2
    )


def test_gguf_file_gives_transformers_logits(checkpoint, tmp_path):
    _, reference = checkpoint
    write_granite_gguf(tmp_path / "granite.gguf", reference)
    config, ours = load_model(tmp_path / "granite.gguf", keep_quantized=False)
    assert (config.embedding_multiplier, config.logits_scaling) == (12.0, 8.0)
    torch.testing.assert_close(
        logits_of(ours, config, TOKENS, [12, 1, 6]), reference_logits(reference, TOKENS), atol=1e-4, rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_engine_matches_transformers(tmp_path, tensor_parallel_size, caplog):
    from tests.integration.test_tensor_parallel import _tp2_matches_transformers

    write_tiny_granite(tmp_path, seed=2)
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(tmp_path, tensor_parallel_size=tensor_parallel_size)
    if tensor_parallel_size == 1:  # the residual multiplier is a PyTorch multiply: no CPU decode graph
        assert "decode graphs: batch 1 stays eager" in caplog.text
