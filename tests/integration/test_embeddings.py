"""LLM.embed on a tiny random Qwen3 folder (runner="pooling"): each embedding is transformers' last hidden state of
the prompt, L2-normalized, whatever the step budget chunks (prefill over several steps), the prefix cache serves, or
tensor parallelism splits; vLLM's --task embed spelling; what a pooling engine refuses. Mean pooling of a causal
model, and tiny BERT / XLM-RoBERTa encoders pooled by CLS, mean or last token, against transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tests.tiny_models import bundled_tokenizer, write_tiny_encoder, write_tiny_qwen

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
    # A sentence-transformers folder that pools by max: refused by name, not pooled another way.
    pooled = _with_pooling(folder, tmp_path / "max", "max_tokens")
    with pytest.raises(ValueError, match="sentence-transformers pooling max_tokens is not supported"):
        LLM(str(pooled), runner="pooling", max_model_len=256, kv_cache_memory_bytes=2**22)


def _with_pooling(folder, target, mode: str):
    """`folder` as a sentence-transformers folder whose Pooling module says `mode`."""
    target.mkdir()
    for item in folder.iterdir():
        (target / item.name).symlink_to(item)
    (target / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                       "type": "sentence_transformers.models.Pooling"}]))  # fmt: skip
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{mode}": True}))
    return target


def test_causal_model_with_mean_pooling_averages_the_whole_prompt(tiny, tmp_path) -> None:
    """A sentence-transformers folder of a causal model that pools by mean: each prompt runs whole in one step (a
    step budget smaller than both prompts together schedules them apart, never chunks them) and its vector is the
    mean of transformers' hidden states over every position; the prefix cache is off, so a repeat is the same."""
    folder, _ = tiny
    pooled = _with_pooling(folder, tmp_path / "mean", "mean_tokens")
    tokenizer = bundled_tokenizer()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(str(pooled), runner="pooling", dtype="float32", max_model_len=32, max_num_batched_tokens=32,
              block_size=4, kv_cache_memory_bytes=2**22)  # fmt: skip
    try:
        assert not llm.llm_engine.info.enable_prefix_caching
        for _ in range(2):
            for output, text in zip(llm.embed(PROMPTS, use_tqdm=False), PROMPTS):
                ids = tokenizer(text, return_tensors="pt").input_ids
                with torch.no_grad():
                    mean = model.model(ids).last_hidden_state[0].mean(0)
                assert torch.allclose(
                    torch.tensor(output.outputs.embedding),
                    torch.nn.functional.normalize(mean, dim=-1),
                    atol=1e-5,
                )
    finally:
        llm.llm_engine.shutdown()


ENCODER_TEXTS = ["w1 w2 w3", "w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17", "w40"]


@pytest.mark.parametrize(
    ("kind", "pooling"),
    [("bert", None), ("bert", "mean_tokens"), ("xlm-roberta", "cls_token"), ("xlm-roberta", "lasttoken")],
)
def test_encoder_embeddings_are_transformers_pooled(tmp_path, kind, pooling) -> None:
    """BERT and XLM-RoBERTa encoders (bidirectional attention, learned positions; RoBERTa's from pad + 1), pooled
    as the sentence-transformers folder says, CLS without one (vLLM's default): transformers' last hidden states
    pooled and normalized, whether the prompts share a step or a 16-token budget runs them in separate steps."""
    model = write_tiny_encoder(tmp_path, kind, pooling)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    expected = []
    for text in ENCODER_TEXTS:
        with torch.no_grad():
            hidden = model(tokenizer(text, return_tensors="pt").input_ids).last_hidden_state[0]
        pooled = {
            None: hidden[0],
            "cls_token": hidden[0],
            "mean_tokens": hidden.mean(0),
            "lasttoken": hidden[-1],
        }
        expected.append(torch.nn.functional.normalize(pooled[pooling], dim=-1))
    for budget in (None, 16):  # 16: 3 + 15 + 3 tokens, one prompt at a time; max_model_len may not pass it
        llm = LLM(
            str(tmp_path), kv_cache_memory_bytes=2**22, max_num_batched_tokens=budget, max_model_len=budget
        )
        try:
            info = llm.llm_engine.info
            assert info.runner == "pooling" and info.max_model_len == (budget or 64)
            assert not info.enable_prefix_caching
            outputs = llm.embed(ENCODER_TEXTS, use_tqdm=False)
            assert llm.llm_engine.kv_cache_manager.pool.num_used_blocks == 0
        finally:
            llm.llm_engine.shutdown()
        for output, vector in zip(outputs, expected):
            assert torch.allclose(torch.tensor(output.outputs.embedding), vector, atol=1e-5)


def test_encoder_refusals(tmp_path) -> None:
    write_tiny_encoder(tmp_path)
    with pytest.raises(ValueError, match="an encoder or a sequence classifier"):
        LLM(str(tmp_path), runner="generate")
    with pytest.raises(ValueError, match="without tensor parallelism"):
        LLM(str(tmp_path), tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"max_model_len must be in \[1, 64\]"):
        LLM(str(tmp_path), max_model_len=65)
    llm = LLM(str(tmp_path), kv_cache_memory_bytes=2**22)
    try:
        with pytest.raises(InvalidRequestError, match="embeddings only"):
            llm.generate("w1 w2", SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
