"""LLM.embed on a tiny random Qwen3 folder (runner="pooling"): each embedding is transformers' last hidden state of
the prompt, L2-normalized, whatever the step budget chunks (prefill over several steps), the prefix cache serves, or
tensor parallelism splits; vLLM's --task embed spelling; what a pooling engine refuses."""

from __future__ import annotations

import json

import pytest
import torch
from tests.tiny_models import bundled_tokenizer, write_tiny_qwen

from pagedserve import LLM, PoolingParams, SamplingParams
from pagedserve.errors import InvalidRequestError

pytestmark = pytest.mark.slow

PROMPTS = [
    "Hello world",
    "A longer prompt, so that a small step budget splits its prefill over several steps.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen3-embed")
    model = write_tiny_qwen(folder, version=3, max_positions=256)
    tokenizer = bundled_tokenizer()
    with torch.no_grad():
        hidden = [
            model.model(tokenizer(p, return_tensors="pt").input_ids).last_hidden_state[0, -1] for p in PROMPTS
        ]
    return folder, hidden


def _check(outputs, hidden, normalize: bool = True) -> None:
    for output, h in zip(outputs, hidden):
        expected = torch.nn.functional.normalize(h, dim=-1) if normalize else h
        assert torch.allclose(torch.tensor(output.outputs.embedding), expected, atol=1e-5)


@pytest.mark.parametrize(
    "engine",
    [
        {"runner": "pooling"},
        {
            "task": "embed",
            "max_num_batched_tokens": 8,
            "block_size": 4,
        },  # chunked prefill, vLLM's old spelling
        {"runner": "pooling", "tensor_parallel_size": 2},
    ],
    ids=["pooling", "chunked-task-embed", "tp2"],
)
def test_embed_is_the_last_hidden_state(tiny, engine) -> None:
    folder, hidden = tiny
    llm = LLM(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_bytes=2**22, **engine)
    try:
        first = llm.embed(PROMPTS, use_tqdm=False)
        _check(first, hidden)
        again = llm.embed(PROMPTS, use_tqdm=False)  # prefix-cache hits: the last block is recomputed
        _check(again, hidden)
        assert llm.llm_engine.kv_cache_manager.pool.num_used_blocks == 0
        _check(
            llm.embed(PROMPTS[:1], PoolingParams(normalize=False), use_tqdm=False), hidden, normalize=False
        )
        with pytest.raises(InvalidRequestError, match="embeddings only"):
            llm.generate(PROMPTS[0], SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


def test_generate_engines_refuse_embeddings_and_other_poolers_are_refused(tiny, tmp_path) -> None:
    folder, _ = tiny
    llm = LLM(str(folder), dtype="float32", max_model_len=256, kv_cache_memory_bytes=2**22)
    with pytest.raises(InvalidRequestError, match="--runner pooling"):
        llm.embed(PROMPTS[0], use_tqdm=False)
    with pytest.raises(ValueError, match="runner generate and task embed disagree"):
        LLM(str(folder), runner="generate", task="embed")
    # A sentence-transformers folder that pools by mean: refused by name, not pooled another way.
    mean = tmp_path / "mean"
    mean.mkdir()
    for item in folder.iterdir():
        (mean / item.name).symlink_to(item)
    (mean / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                     "type": "sentence_transformers.models.Pooling"}]))  # fmt: skip
    (mean / "1_Pooling").mkdir()
    (mean / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(ValueError, match="sentence-transformers pooling mean_tokens is not supported"):
        LLM(str(mean), runner="pooling", max_model_len=256, kv_cache_memory_bytes=2**22)
