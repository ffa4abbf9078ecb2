"""OLMo 2 (`Olmo2ForCausalLM`): a tiny random checkpoint saved by transformers (norms randomized so the q/k norms
over whole projections and the post-block norms all move the logits) gives transformers' logits (float32, 1e-4)
over whole prompts, chunked prefills and decode steps, from its folder and from a GGUF file written as llama.cpp's
converter writes olmo2 (no Q/K permutation, the norms under attn_q_norm / post_attention_norm / post_ffw_norm);
the engine serves it (greedy tokens and logprobs equal transformers'); tensor parallelism is refused by name."""

from __future__ import annotations

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


def write_tiny_olmo2(folder: pathlib.Path, vocab_size: int | None = None, seed: int = 0):
    tokenizer = bundled_tokenizer() if vocab_size is None else None
    config = transformers.Olmo2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    config.architectures = ["Olmo2ForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.Olmo2ForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("olmo2")
    return folder, write_tiny_olmo2(folder, vocab_size=97, seed=1)


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == "Olmo2ForCausalLM"
    tokens = torch.randint(3, 97, (sum(chunks),), generator=torch.Generator().manual_seed(6)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, chunks), expected, atol=1e-4, rtol=1e-4)


def test_gguf_file_gives_transformers_logits(checkpoint, tmp_path):
    _, reference = checkpoint

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_freq_base(reference.config.rope_parameters["rope_theta"])

    write_transformers_gguf(tmp_path / "olmo2.gguf", "olmo2", reference, metadata)
    config, ours = load_model(tmp_path / "olmo2.gguf", keep_quantized=False)
    assert type(ours).__name__ == "Olmo2ForCausalLM"
    tokens = torch.randint(3, 97, (19,), generator=torch.Generator().manual_seed(7)).tolist()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, [12, 1, 6]), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_engine_matches_transformers_and_refuses_tensor_parallelism(tmp_path):
    from tests.integration.test_tensor_parallel import _tp2_matches_transformers

    from pagedserve import LLM

    write_tiny_olmo2(tmp_path, seed=2)
    _tp2_matches_transformers(tmp_path, tensor_parallel_size=1)
    with pytest.raises(Exception, match="q/k norms span every attention head"):
        LLM(
            str(tmp_path),
            dtype="float32",
            kv_cache_memory_bytes=2**22,
            max_model_len=64,
            tensor_parallel_size=2,
        )
