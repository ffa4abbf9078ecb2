"""Limits of --max-model-len: past the model's max_position_embeddings only with VLLM_ALLOW_LONG_MAX_MODEL_LEN (then
positions past it run: the rotary table covers them); a sliding window limits nothing (sliding-window attention:
tests/integration/test_sliding_window_models.py) unless --disable-sliding-window caps the length at it."""

from __future__ import annotations

import pathlib
import sys

import pytest
import tokenizers
import torch
import transformers

from pagedserve import LLM, SamplingParams

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "models"))
from tiny_gguf_writer import write_tiny_gguf  # noqa: E402

pytestmark = pytest.mark.slow


def test_long_max_model_len_needs_the_variable(tmp_path, monkeypatch) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf").path  # context_length 256
    common = dict(max_model_len=320, kv_cache_memory_bytes=8 * 1024**2, dtype="float32")
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(ValueError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        LLM(str(path), **common)
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    llm = LLM(str(path), **common)
    assert llm.llm_engine.info.max_model_len == 320
    prompt = {"prompt_token_ids": [5 + i % 50 for i in range(290)]}
    [out] = llm.generate(
        prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False
    )
    assert len(out.outputs[0].token_ids) == 20  # positions 290..309: past the 256 the model declares
    assert (
        llm.llm_engine.executor.runner.model.model.rotary.cos_cache.shape[0] >= 320
    )  # the batch budget's 4096


def test_rotary_tables_cover_the_reachable_positions_only(tmp_path) -> None:
    """A step reaches positions below max_model_len (and the GPU memory profile's longest step); the tables are
    built for those, not for the model's whole context (Gemma 3's two tables at 131k positions are 268 MB)."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf").path  # context_length 256
    llm = LLM(str(path), max_model_len=64, max_num_batched_tokens=96, kv_cache_memory_bytes=8 * 1024**2)
    assert llm.llm_engine.executor.runner.model.model.rotary.cos_cache.shape[0] == 96
    prompt = {"prompt_token_ids": [5 + i % 50 for i in range(50)]}
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
    [out] = llm.generate(prompt, params, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 14  # positions 50..63: the last one max_model_len allows


_WINDOW_CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, sliding_window=48,
)  # fmt: skip


def _save_with_words(folder: pathlib.Path, config: transformers.PretrainedConfig) -> None:
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="w0", eos_token="w1"
    ).save_pretrained(folder)


@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_a_sliding_window_does_not_cap_max_model_len(tmp_path, arch) -> None:
    if arch == "mistral":
        config = transformers.MistralConfig(**_WINDOW_CONFIG)
    else:  # Qwen configs carry a sliding_window that means nothing while use_sliding_window is false
        config = transformers.Qwen3Config(**_WINDOW_CONFIG, head_dim=8, use_sliding_window=False)
    _save_with_words(tmp_path, config)
    kwargs = dict(load_format="dummy", kv_cache_memory_bytes=4 * 1024**2)
    llm = LLM(str(tmp_path), **kwargs)
    assert llm.llm_engine.info.max_model_len == 128


def test_disable_sliding_window_caps_max_model_len_at_the_window(tmp_path) -> None:
    """vLLM's --disable-sliding-window on Mistral: max_model_len defaults to the window, a longer one is refused."""
    _save_with_words(tmp_path, transformers.MistralConfig(**_WINDOW_CONFIG))
    kwargs = dict(load_format="dummy", kv_cache_memory_bytes=4 * 1024**2, disable_sliding_window=True)
    llm = LLM(str(tmp_path), **kwargs)
    try:
        assert llm.llm_engine.info.max_model_len == 48
        assert all(
            layer.self_attn.sliding_window is None
            for layer in llm.llm_engine.executor.runner.model.model.layers
        )
    finally:
        llm.llm_engine.shutdown()
    with pytest.raises(ValueError, match=r"\[1, 48\] for this model with --disable-sliding-window, got 64"):
        LLM(str(tmp_path), max_model_len=64, **kwargs)


def test_qwen_use_sliding_window_serves_with_disable_sliding_window(tmp_path) -> None:
    """A Qwen3 checkpoint with use_sliding_window on (layer 1 of 2 local): refused without the flag; with it,
    capped at the window, where full attention sees the same keys, so greedy tokens and logprobs are transformers'."""
    config = transformers.Qwen3Config(
        **(_WINDOW_CONFIG | {"num_hidden_layers": 2}),
        head_dim=8,
        use_sliding_window=True,
        max_window_layers=1,
    )
    assert config.layer_types == ["full_attention", "sliding_attention"]
    _save_with_words(tmp_path, config)
    kwargs = dict(dtype="float32", kv_cache_memory_bytes=4 * 1024**2, block_size=4, max_num_batched_tokens=16)
    with pytest.raises(ValueError, match="use_sliding_window.*--disable-sliding-window"):
        LLM(str(tmp_path), **kwargs)
    llm = LLM(str(tmp_path), disable_sliding_window=True, **kwargs)
    prompt = [3 + (7 * i) % 60 for i in range(36)]
    try:
        assert llm.llm_engine.info.max_model_len == 48
        params = SamplingParams(temperature=0, max_tokens=12, logprobs=0, ignore_eos=True)
        output = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    finally:
        llm.llm_engine.shutdown()
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = reference(torch.tensor([prompt + list(output.token_ids)])).logits[0].log_softmax(-1)
    for step, token in enumerate(output.token_ids):
        row = logprobs[len(prompt) - 1 + step]
        assert abs(output.logprobs[step][token].logprob - float(row[token])) < 1e-4
        assert float(row.max() - row[token]) < 1e-4
