"""VLLM_ALLOW_LONG_MAX_MODEL_LEN: a --max-model-len past the model's max_position_embeddings is refused unless the
variable is set, and then positions past it run (the rotary table covers them) instead of failing."""

from __future__ import annotations

import pathlib
import sys

import pytest

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
