"""Cohere's Command R family (`CohereForCausalLM`, `Cohere2ForCausalLM`): tiny random checkpoints saved by
transformers (attention and MLP side by side on one LayerNorm, interleaved rotary pairs reordered at load, a
logit scale; Cohere2's window layers with rotary positions and a global layer without) give transformers' logits
(float32, 1e-4) over whole prompts, chunked prefills and decode steps; the engine serves them (greedy tokens and
logprobs equal transformers') at TP=1 and TP=2, Cohere2's window layers holding a window's blocks; Command R+'s
q/k norms and LoRA adapters are refused by name."""

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

from pagedserve.attention.backend import get_attention_backend
from pagedserve.models.cohere import CohereForCausalLM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from tests.tiny_models import bundled_tokenizer  # noqa: E402


def write_tiny_cohere(folder: pathlib.Path, version: int, vocab_size: int | None = None, seed: int = 0):
    tokenizer = bundled_tokenizer() if vocab_size is None else None
    common = dict(
        vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
        layer_norm_eps=1e-5, logit_scale=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True,
    )  # fmt: skip
    if version == 2:
        config = transformers.Cohere2Config(**common, sliding_window=6)
        config.architectures = ["Cohere2ForCausalLM"]
        model_class = transformers.Cohere2ForCausalLM
    else:
        config = transformers.CohereConfig(**common)
        config.architectures = ["CohereForCausalLM"]
        model_class = transformers.CohereForCausalLM
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=[1, 2], ids=["command-r", "command-r7b"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"cohere{request.param}")
    return folder, write_tiny_cohere(folder, request.param, vocab_size=97, seed=request.param)


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == "CohereForCausalLM"
    tokens = torch.randint(3, 97, (sum(chunks),), generator=torch.Generator().manual_seed(6)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, chunks), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", [1, 2])
def test_gguf_file_gives_transformers_logits(tmp_path, version):
    """llama.cpp's command-r / cohere2 layout: the checkpoint's q/k rows as they are (it rotates adjacent pairs),
    the LayerNorm epsilon under layer_norm_epsilon, the logit scale and (cohere2) the window in metadata."""
    reference = write_tiny_cohere(tmp_path / "hf", version, vocab_size=97, seed=9)
    config = reference.config

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_layer_norm_eps(config.layer_norm_eps)
        writer.add_logit_scale(config.logit_scale)
        if version == 2:
            writer.add_sliding_window(config.sliding_window)

    arch = "cohere2" if version == 2 else "command-r"
    write_transformers_gguf(tmp_path / "model.gguf", arch, reference, metadata)
    ours_config, ours = load_model(tmp_path / "model.gguf", keep_quantized=False)
    assert ours_config.architectures == config.architectures
    tokens = torch.randint(3, 97, (19,), generator=torch.Generator().manual_seed(7)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(
        logits_of(ours, ours_config, tokens, [12, 1, 6]), expected, atol=1e-4, rtol=1e-4
    )


def test_cohere2_global_layers_have_no_rotary_positions(tmp_path):
    write_tiny_cohere(tmp_path, 2, vocab_size=97)
    _, ours = load_model(tmp_path, keep_quantized=False)
    assert [layer.self_attn.use_rope for layer in ours.model.layers] == [True, True, True, False]
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [6, 6, 6, None]


def test_command_r_plus_qk_norms_are_refused_by_name():
    config = transformers.CohereConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        use_qk_norm=True,
    )  # fmt: skip
    config.architectures = ["CohereForCausalLM"]
    with pytest.raises(ValueError, match="use_qk_norm"):
        CohereForCausalLM(config, get_attention_backend("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_engine_matches_transformers(tmp_path, version, caplog):
    from tests.integration.test_tensor_parallel import _tp2_matches_transformers

    write_tiny_cohere(tmp_path, version, seed=3)
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(tmp_path, tensor_parallel_size=1)
    if version == 2:  # three window layers and one global: the window group's blocks go back to the pool
        assert (
            "KV cache groups (sliding-window layers free blocks out of the window): full, window 6"
            in caplog.text
        )
    _tp2_matches_transformers(tmp_path)


@pytest.mark.slow
def test_lora_is_refused_by_name(tmp_path):
    from pagedserve import LLM

    write_tiny_cohere(tmp_path, 1, seed=4)
    with pytest.raises(ValueError, match="LoRA adapters on CohereForCausalLM are not supported"):
        LLM(str(tmp_path), dtype="float32", kv_cache_memory_bytes=2**22, max_model_len=64, enable_lora=True)
