"""Decoder models as classifiers and rerankers (vLLM's `...ForSequenceClassification` for Llama-family models), on
tiny random checkpoints written by transformers with the bundled tokenizer:

- a Qwen3 reranker with a one-label `score` head: LLM.score gives transformers' sigmoid of the last token's logit
  for each (query, document) pair, the two texts joined as the tokenizer joins a pair; chunked prompts and prefix
  hits give the same;
- a Llama classifier with three labels: LLM.classify gives transformers' softmax;
- a plain Qwen3 causal LM served as Qwen3-Reranker is, through vLLM's --hf-overrides (architectures,
  classifier_from_token ["no", "yes"], is_original_qwen3_reranker): each score is the causal LM's softmax
  probability of "yes" against "no" after the pair, at TP=1 and TP=2.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
import transformers
from tests.tiny_models import bundled_tokenizer, write_tiny_qwen

from pagedserve import LLM

pytestmark = [pytest.mark.slow, pytest.mark.model]

QUERY = "What is paged attention?"
DOCUMENTS = [
    "Paged attention stores the KV cache in fixed-size blocks.",
    "Paris is the capital of France.",
    "The KV cache of each sequence is split into blocks that need not be contiguous in memory.",
]
RERANKER = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
COMMON = dict(dtype="float32", kv_cache_memory_bytes=2**22, max_model_len=128, block_size=4)


def write_classifier(folder: pathlib.Path, kind: str, num_labels: int, seed: int, tie: bool = False):
    tokenizer = bundled_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=num_labels,
        pad_token_id=0, tie_word_embeddings=tie,
    )  # fmt: skip
    if kind == "qwen3":
        config = transformers.Qwen3Config(**settings, head_dim=32)
        model_class = transformers.Qwen3ForSequenceClassification
    else:
        config = transformers.LlamaConfig(**settings)
        model_class = transformers.LlamaForSequenceClassification
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    with torch.no_grad():  # transformers initialises the head small: make the labels tell texts apart
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def pair_logits(model, tokenizer, pairs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(a, b, return_tensors="pt")).logits[0, -1] for a, b in pairs]


@pytest.mark.parametrize("tie", [False, True])
def test_reranker_head_scores_are_transformers(tmp_path, tie) -> None:
    """tie: Qwen3-Reranker-0.6B-seq-cls's config (tied embeddings, so no lm_head in the file)."""
    model = write_classifier(tmp_path, "qwen3", 1, seed=1, tie=tie)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = [
            float(model(**tokenizer(QUERY, d, return_tensors="pt")).logits[0, 0].sigmoid()) for d in DOCUMENTS
        ]
    assert max(expected) - min(expected) > 0.05
    # A step budget of 16 tokens chunks every prompt; the query's blocks are prefix hits after the first pair.
    llm = LLM(str(tmp_path), **COMMON, max_num_batched_tokens=16, enable_prefix_caching=True)
    try:
        info = llm.llm_engine.info
        assert (info.runner, info.pooling_task) == ("pooling", "score")
        first = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS, use_tqdm=False)]
        again = llm.score(QUERY, DOCUMENTS, use_tqdm=False)
        assert first == pytest.approx(expected, abs=1e-5)
        assert [o.outputs.score for o in again] == pytest.approx(expected, abs=1e-5)
        with pytest.raises(Exception, match="scores only|does not support|embeddings"):
            llm.generate(QUERY, use_tqdm=False)
        assert llm.llm_engine.kv_cache_manager.pool.num_used_blocks == 0
    finally:
        llm.llm_engine.shutdown()


def test_three_label_classifier_gives_transformers_softmax(tmp_path) -> None:
    model = write_classifier(tmp_path, "llama", 3, seed=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = [
            model(**tokenizer(d, return_tensors="pt")).logits[0].softmax(-1).tolist() for d in DOCUMENTS
        ]
    llm = LLM(str(tmp_path), **COMMON)
    try:
        assert llm.llm_engine.info.pooling_task == "classify"
        got = [o.outputs.probs for o in llm.classify(DOCUMENTS, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()
    for mine, theirs in zip(got, expected):
        assert mine == pytest.approx(theirs, abs=1e-5)


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_qwen3_reranker_through_hf_overrides(tmp_path, tensor_parallel_size) -> None:
    model = write_tiny_qwen(tmp_path, version=3, max_positions=256, seed=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    no, yes = tokenizer.convert_tokens_to_ids(["no", "yes"])
    with torch.no_grad():
        expected = []
        for document in DOCUMENTS:
            last = model(**tokenizer(QUERY, document, return_tensors="pt")).logits[0, -1]
            expected.append(float(last[[no, yes]].softmax(-1)[1]))
    assert max(expected) - min(expected) > 1e-3
    llm = LLM(str(tmp_path), **COMMON, hf_overrides=RERANKER, tensor_parallel_size=tensor_parallel_size)
    try:
        assert llm.llm_engine.info.pooling_task == "score"
        got = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()
    assert got == pytest.approx(expected, abs=1e-5)


def test_classifier_tokens_outside_the_vocabulary_are_named(tmp_path) -> None:
    write_tiny_qwen(tmp_path, version=3, max_positions=256, seed=4)
    overrides = {**RERANKER, "classifier_from_token": ["no", "definitely-not-a-token"]}
    with pytest.raises(ValueError, match="definitely-not-a-token"):
        LLM(str(tmp_path), **COMMON, hf_overrides=overrides)
