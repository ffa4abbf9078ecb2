"""SmolLM3 (`SmolLM3ForCausalLM`): a tiny random checkpoint saved by transformers (4 layers, the last one without
rotary embeddings, as every fourth is) gives transformers' logits (float32, 1e-4) over whole prompts, chunked
prefills and decode steps; with the NoPE layer rotated the logits differ; a GGUF file written as llama.cpp's
converter writes SmolLM3 (Q and K rows permuted as Llama's, no NoPE metadata: llama.cpp's fixed every-fourth rule)
gives the same; the engine serves it (greedy tokens and logprobs equal transformers', decode graphs replayed)."""

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


def write_tiny_smollm3(folder: pathlib.Path, vocab_size: int | None = None, seed: int = 0):
    tokenizer = bundled_tokenizer() if vocab_size is None else None
    config = transformers.SmolLM3Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config.architectures = ["SmolLM3ForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.SmolLM3ForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


def write_smollm3_gguf(path: pathlib.Path, model) -> None:
    config = model.config

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])

    write_transformers_gguf(path, "smollm3", model, metadata, permute_qk=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm3")
    return folder, write_tiny_smollm3(folder, vocab_size=97, seed=1)


TOKENS = torch.randint(3, 97, (19,), generator=torch.Generator().manual_seed(5)).tolist()


def reference_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert [layer.self_attn.use_rope for layer in ours.model.layers] == [True, True, True, False]
    torch.testing.assert_close(
        logits_of(ours, config, TOKENS, chunks), reference_logits(reference, TOKENS), atol=1e-4, rtol=1e-4
    )
    ours.model.layers[3].self_attn.use_rope = True
    assert not torch.allclose(
        logits_of(ours, config, TOKENS, chunks), reference_logits(reference, TOKENS), atol=1e-3
    )


def test_gguf_file_gives_transformers_logits(checkpoint, tmp_path):
    _, reference = checkpoint
    write_smollm3_gguf(tmp_path / "smollm3.gguf", reference)
    config, ours = load_model(tmp_path / "smollm3.gguf", keep_quantized=False)
    assert list(config.no_rope_layers) == [1, 1, 1, 0]
    torch.testing.assert_close(
        logits_of(ours, config, TOKENS, [12, 1, 6]), reference_logits(reference, TOKENS), atol=1e-4, rtol=1e-4
    )


@pytest.mark.slow
def test_engine_matches_transformers(tmp_path, caplog):
    from tests.integration.test_tensor_parallel import _tp2_matches_transformers

    write_tiny_smollm3(tmp_path, seed=2)
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(tmp_path, tensor_parallel_size=1)
    assert "decode graphs: batch 1 captured" in caplog.text
