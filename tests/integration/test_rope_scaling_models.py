"""Scaled rotary embeddings served by the engine: greedy tokens and logprobs equal transformers' over a 21-token
prompt chunked into steps of 8 and 6 replayed decode steps.

Phi-4-mini-shaped checkpoints (LongRoPE factor sets, rotary on 3/4 of each head, q|k|v and gate|up fused): served
with max_model_len 128 past a 16-token original context, every position uses the long factors (transformers' choice
for a sequence past the original context); within a 128-token original context, the short ones (transformers'
choice for a 27-token sequence). At TP=1 and TP=2.

YaRN on a Qwen3 checkpoint through --hf-overrides (Qwen's recipe past 32k): the checkpoint's 32 positions become
32 x 4, a max_model_len refused without the override is served, and the output is that of transformers on the same
config with the rope_scaling written in."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch
import transformers
from tests.integration.test_tensor_parallel import _tp2_matches_transformers
from tests.tiny_models import bundled_tokenizer, write_tiny_qwen

from pagedserve import LLM

pytestmark = [pytest.mark.slow, pytest.mark.model]


def write_tiny_phi4_mini(folder: pathlib.Path, original: int, seed: int) -> None:
    tokenizer = bundled_tokenizer()
    gen = torch.Generator().manual_seed(seed)
    pairs = 12 // 2  # 3/4 of a 16-dim head
    config = transformers.Phi3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(256, 4 * original),
        original_max_position_embeddings=original, initializer_range=0.2, tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "longrope", "partial_rotary_factor": 0.75,
            "short_factor": (1 + torch.rand(pairs, generator=gen) / 2).tolist(),
            "long_factor": (1 + 6 * torch.rand(pairs, generator=gen)).tolist(),
        },
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0,
    )  # fmt: skip
    config.architectures = ["Phi3ForCausalLM"]
    torch.manual_seed(seed)
    transformers.Phi3ForCausalLM(config).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("longrope-models")
    write_tiny_phi4_mini(root / "long", original=16, seed=1)
    write_tiny_phi4_mini(root / "short", original=128, seed=2)
    model = write_tiny_qwen(root / "qwen3", version=3, max_positions=32, seed=3)
    model.config.rope_parameters = {**model.config.rope_parameters, **YARN}
    model.save_pretrained(root / "qwen3-yarn")
    bundled_tokenizer().save_pretrained(root / "qwen3-yarn")
    return root


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}


@pytest.mark.parametrize("kind", ["long", "short"])
def test_greedy_tokens_and_logprobs_match_transformers(folders, kind, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(folders / kind, tensor_parallel_size=1)
    assert "decode graphs: batch 1 captured" in caplog.text  # the partial rotation is one C call too


def test_at_tp2_matches_transformers(folders) -> None:
    _tp2_matches_transformers(folders / "long")


def test_yarn_through_hf_overrides_matches_transformers(folders) -> None:
    with pytest.raises(ValueError, match=r"max_model_len must be in \[1, 32\]"):
        LLM(model=str(folders / "qwen3"), dtype="float32", max_model_len=128, kv_cache_memory_bytes=2**22)
    _tp2_matches_transformers(
        folders / "qwen3", tensor_parallel_size=1, reference_folder=folders / "qwen3-yarn",
        hf_overrides={"rope_scaling": YARN},
    )  # fmt: skip
    llm = LLM(model=str(folders / "qwen3-yarn"), dtype="float32", kv_cache_memory_bytes=2**22)
    try:
        assert llm.llm_engine.info.max_model_len == 128  # vLLM's derived length: 32 x 4
    finally:
        llm.llm_engine.shutdown()
