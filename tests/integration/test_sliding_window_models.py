"""Models with sliding-window attention served by the engine, past their window: tiny random Gemma 3 (text and the
multimodal checkpoint served text-only; local layers with a 6-token window beside global ones), Mistral (a 5-token
window on every layer) and Phi-3 (fused q|k|v and gate|up, a 6-token window). Greedy tokens and logprobs equal
transformers' over a 21-token prompt chunked into steps of 8 tokens and 6 decode steps (replayed CPU decode graphs,
which keep the window), at TP=1 and, for Gemma 3 and Phi-3, at TP=2; requests sharing a prefix longer than the
window give what each gives alone; Gemma 2 (a window on every other layer, attention and final soft-caps) at TP=1
and TP=2; a LoRA adapter on Gemma 3 (text and multimodal names) gives its merged
checkpoint's output."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch
import transformers
from tests.integration.test_tensor_parallel import _tp2_matches_transformers
from tests.lora_writer import merged_state_dict, write_adapter
from tests.tiny_models import bundled_tokenizer, write_tiny_gemma2, write_tiny_gemma3

from pagedserve import LLM, SamplingParams
from pagedserve.lora.request import LoRARequest

pytestmark = [pytest.mark.slow, pytest.mark.model]


def write_tiny_phi3(folder: pathlib.Path) -> None:
    """Phi-3-mini-4k's layout: q|k|v and gate|up fused in the file, a sliding window on every layer (6 here)."""
    tokenizer = bundled_tokenizer()
    config = transformers.Phi3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        original_max_position_embeddings=256, sliding_window=6, initializer_range=0.2, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0,
    )  # fmt: skip
    config.architectures = ["Phi3ForCausalLM"]
    torch.manual_seed(6)
    transformers.Phi3ForCausalLM(config).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_tiny_mistral(folder: pathlib.Path) -> None:
    tokenizer = bundled_tokenizer()
    config = transformers.MistralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=5,
        initializer_range=0.2, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    config.architectures = ["MistralForCausalLM"]
    torch.manual_seed(4)
    transformers.MistralForCausalLM(config).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sliding-window-models")
    write_tiny_gemma3(root / "gemma3")
    write_tiny_gemma3(root / "gemma3-multimodal", multimodal=True, seed=1)
    write_tiny_mistral(root / "mistral")
    write_tiny_phi3(root / "phi3")
    write_tiny_gemma2(root / "gemma2", seed=3)
    return root


@pytest.mark.parametrize("kind", ["gemma3", "gemma3-multimodal", "mistral", "phi3", "gemma2"])
def test_greedy_tokens_and_logprobs_match_transformers(folders, kind, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(folders / kind, tensor_parallel_size=1)
    # Every operation of their steps is a C call (Gemma's GELU gate and float32 norm weights included): the decode
    # steps replay, the windows with them.
    assert "decode graphs: batch 1 captured" in caplog.text


@pytest.mark.parametrize("kind", ["gemma3", "phi3", "gemma2"])
def test_at_tp2_matches_transformers(folders, kind) -> None:
    """Each rank a slice of the heads (Phi-3's fused q|k|v split at load, then sharded as Llama's)."""
    _tp2_matches_transformers(folders / kind)


def test_requests_sharing_a_prefix_longer_than_the_window(folders) -> None:
    """A prefix-cache hit past the window, and a batch of rows whose windows start at different positions, give
    what each prompt gives alone in a fresh engine."""
    prefix = list(range(100, 130))
    prompts = [prefix + [7, 8, 9], prefix + [11], list(range(300, 311))]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    common = dict(
        model=str(folders / "gemma3"), dtype="float32", max_model_len=128, kv_cache_memory_bytes=2**22
    )
    alone = []
    for prompt in prompts:
        llm = LLM(**common, block_size=4)
        alone.append(
            llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0].token_ids
        )
        llm.llm_engine.shutdown()
    llm = LLM(**common, block_size=4, enable_prefix_caching=True)
    try:
        llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)
        together = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        assert [out.outputs[0].token_ids for out in together] == alone
        assert together[1].num_cached_tokens >= 28  # the shared prefix's whole blocks came from the cache
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("kind", ["gemma3", "gemma3-multimodal"])
def test_lora_adapter_on_gemma3_gives_the_merged_checkpoint(folders, tmp_path, kind) -> None:
    """A PEFT adapter on every projection of Gemma 3 (the multimodal checkpoint's adapter names its layers
    model.language_model.layers, as transformers 5 does) gives the greedy tokens and logprobs of the checkpoint with
    the adapter merged in."""
    base = folders / kind
    model_class = (
        transformers.Gemma3ForConditionalGeneration
        if "multimodal" in kind
        else transformers.Gemma3ForCausalLM
    )
    model = model_class.from_pretrained(base, dtype=torch.float32).eval()
    text_config = getattr(model.config, "text_config", model.config)
    prefix = "model.language_model.layers" if "multimodal" in kind else "model.layers"
    tensors = write_adapter(
        tmp_path / "adapter", text_config, rank=4, alpha=8.0, seed=7, layers_prefix=prefix
    )
    model.load_state_dict(merged_state_dict(model, tensors, 4, 8.0))
    model.save_pretrained(tmp_path / "merged")
    bundled_tokenizer().save_pretrained(tmp_path / "merged")
    prompt = [{"prompt_token_ids": list(range(200, 221))}]
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=0, ignore_eos=True)
    common = dict(dtype="float32", max_model_len=128, kv_cache_memory_bytes=2**22)
    llm = LLM(str(tmp_path / "merged"), **common)
    expected = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    llm.llm_engine.shutdown()
    llm = LLM(str(base), enable_lora=True, max_lora_rank=8, **common)
    try:
        lora = LoRARequest("adapter", 1, str(tmp_path / "adapter"))
        got = llm.generate(prompt, params, lora_request=lora, use_tqdm=False)[0].outputs[0]
        plain = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    finally:
        llm.llm_engine.shutdown()
    assert got.token_ids == expected.token_ids
    for mine, theirs, token in zip(got.logprobs, expected.logprobs, got.token_ids):
        assert abs(mine[token].logprob - theirs[token].logprob) < 1e-3
    assert plain.logprobs[0][plain.token_ids[0]].logprob != pytest.approx(
        got.logprobs[0][got.token_ids[0]].logprob
    )
