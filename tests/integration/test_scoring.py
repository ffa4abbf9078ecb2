"""LLM.score (vLLM's offline scoring) on tiny random checkpoints: BERT and XLM-RoBERTa cross-encoders give
transformers' sigmoid of their head's logit for each pair (BERT's second text as token type 1), and an embedding
model gives the cosine similarity of transformers' pooled embeddings; vLLM's pairing rules and refusals."""

from __future__ import annotations

import pytest
import torch
import transformers
from tests.tiny_models import write_tiny_encoder

from pagedserve import LLM
from pagedserve.errors import InvalidRequestError

pytestmark = pytest.mark.slow

QUERY = "w1 w2 w3"
DOCUMENTS = ["w4 w5", "w1 w2 w9 w10 w11", "w30", "w3 w2 w1 w7"]


def _reference_scores(model, folder, pairs) -> list[float]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [float(model(**tokenizer(a, b, return_tensors="pt")).logits[0, 0].sigmoid()) for a, b in pairs]


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
def test_cross_encoder_scores_are_transformers(tmp_path, kind) -> None:
    model = write_tiny_encoder(tmp_path, kind, seed=5, cross_encoder=True).eval()
    llm = LLM(str(tmp_path), kv_cache_memory_bytes=2**22, max_num_batched_tokens=64, max_model_len=64)
    try:
        info = llm.llm_engine.info
        assert (info.runner, info.pooling_task) == ("pooling", "score")
        expected = _reference_scores(model, tmp_path, [(QUERY, d) for d in DOCUMENTS])
        assert max(expected) - min(expected) > 0.05  # the pairs score apart: the check can tell them apart
        got = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS, use_tqdm=False)]
        assert got == pytest.approx(expected, abs=1e-5)
        # Paired in order: one text_1 for each text_2.
        firsts = [DOCUMENTS[1], QUERY]
        pairs = list(zip(firsts, DOCUMENTS[:2]))
        got = [o.outputs.score for o in llm.score(firsts, DOCUMENTS[:2], use_tqdm=False)]
        assert got == pytest.approx(_reference_scores(model, tmp_path, pairs), abs=1e-5)
        with pytest.raises(InvalidRequestError, match="text_1 must hold one text or as many as text_2"):
            llm.score(firsts, DOCUMENTS, use_tqdm=False)
        with pytest.raises(InvalidRequestError, match="text_2 must hold at least one text"):
            llm.score(QUERY, [], use_tqdm=False)
        with pytest.raises(InvalidRequestError, match="embeddings"):
            llm.generate(QUERY, use_tqdm=False)
        assert llm.llm_engine.kv_cache_manager.pool.num_used_blocks == 0
    finally:
        llm.llm_engine.shutdown()


def test_embedding_model_scores_by_cosine_similarity(tmp_path) -> None:
    model = write_tiny_encoder(tmp_path, "bert", "mean_tokens", seed=6)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)

    def embedding(text: str) -> torch.Tensor:
        with torch.no_grad():
            return model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0)

    llm = LLM(str(tmp_path), kv_cache_memory_bytes=2**22)
    try:
        assert llm.llm_engine.info.pooling_task == "embed"
        got = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()
    expected = [float(torch.cosine_similarity(embedding(QUERY), embedding(d), dim=0)) for d in DOCUMENTS]
    assert got == pytest.approx(expected, abs=1e-5)


def test_classifier_gives_label_probabilities(tmp_path, bundled_llm_fp32) -> None:
    """A 3-label BERT classifier: LLM.classify gives transformers' softmax, the label names come from id2label;
    LLM.score wants one label, and a generate model serves neither."""
    with pytest.raises(
        InvalidRequestError, match="LLM.score needs an embedding model or a one-label classifier"
    ):
        bundled_llm_fp32.score("Hello", "world")
    with pytest.raises(InvalidRequestError, match="LLM.classify needs a sequence-classification model"):
        bundled_llm_fp32.classify("Hello")
    model = write_tiny_encoder(
        tmp_path, seed=7, cross_encoder=True, labels=["negative", "neutral", "positive"]
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    llm = LLM(str(tmp_path), kv_cache_memory_bytes=2**22)
    try:
        info = llm.llm_engine.info
        assert (info.pooling_task, info.labels) == ("classify", ["negative", "neutral", "positive"])
        outputs = llm.classify(DOCUMENTS, use_tqdm=False)
        with pytest.raises(InvalidRequestError, match="LLM.score needs"):
            llm.score(QUERY, DOCUMENTS, use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    for text, output in zip(DOCUMENTS, outputs):
        with torch.no_grad():
            expected = model(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert output.outputs.num_classes == 3
        assert output.outputs.probs == pytest.approx(expected.tolist(), abs=1e-5)
