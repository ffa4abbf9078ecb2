"""vLLM's /score and /rerank on real servers: a tiny random BERT cross-encoder (scores = transformers' sigmoid of
its head's logit, BERT's token types included), the Jina / Cohere rerank shape on /rerank, /v1/rerank and
/v2/rerank, use_activation, bad input as 400s; /classify on it and on a 3-label XLM-R classifier (softmax,
id2label names); a BERT embedding model scoring by cosine similarity; a generate model refusing both."""

from __future__ import annotations

import math

import httpx
import pytest
import torch
import transformers

from tests.tiny_models import write_tiny_encoder

from .conftest import launch

pytestmark = [pytest.mark.server, pytest.mark.slow]

QUERY = "w1 w2 w3"
DOCUMENTS = ["w4 w5", "w1 w2 w9 w10 w11", "w30", "w3 w2 w1 w7"]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    model = write_tiny_encoder(folder, "bert", seed=5, cross_encoder=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        scores = [
            float(model(**tokenizer(QUERY, d, return_tensors="pt")).logits[0, 0].sigmoid()) for d in DOCUMENTS
        ]
    server = launch(
        tmp_path_factory.mktemp("rerank-server"), str(folder), "--served-model-name", "tiny-rerank",
        "--max-model-len", "64",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server, scores
    finally:
        server.terminate()


def test_score_gives_transformers_scores(reranker) -> None:
    server, expected = reranker
    body = httpx.post(f"{server.url}/score", json={"text_1": QUERY, "text_2": DOCUMENTS}, timeout=60).json()
    assert body["object"] == "list" and body["model"] == "tiny-rerank"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3] and {d["object"] for d in body["data"]} == {
        "score"
    }
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4 * len(QUERY.split())
    raw = httpx.post(
        f"{server.url}/v1/score",
        json={"text_1": [QUERY] * 4, "text_2": DOCUMENTS, "use_activation": False},
        timeout=60,
    ).json()
    logits = [math.log(p / (1 - p)) for p in expected]
    assert [d["score"] for d in raw["data"]] == pytest.approx(logits, abs=1e-4)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_orders_documents(reranker, path) -> None:
    server, expected = reranker
    body = httpx.post(
        f"{server.url}{path}", json={"model": "tiny-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 3},
        timeout=60,
    ).json()  # fmt: skip
    order = sorted(range(4), key=lambda i: -expected[i])[:3]
    assert [r["index"] for r in body["results"]] == order
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(
        [expected[i] for i in order], abs=1e-5
    )
    assert (
        body["model"] == "tiny-rerank"
        and body["usage"]["total_tokens"] > 0
        and body["id"].startswith("rerank-")
    )


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/score", {"text_1": ["w1", "w2"], "text_2": DOCUMENTS}, "text_1"),
        ("/score", {"text_1": QUERY, "text_2": []}, "text_2"),
        ("/score", {"text_1": QUERY, "text_2": [""]}, "text_2"),
        ("/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": -1}, "top_n"),
        ("/rerank", {"query": QUERY, "documents": ["w1 " * 70]}, "prompt"),
        (
            "/rerank",
            {"query": QUERY, "documents": DOCUMENTS, "truncate_prompt_tokens": 0},
            "truncate_prompt_tokens",
        ),
        ("/v1/embeddings", {"input": QUERY}, "model"),
        ("/v1/completions", {"prompt": QUERY}, "model"),
    ],
)
def test_bad_input_is_a_400(reranker, path, body, param) -> None:
    server, _ = reranker
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and (error["param"] == param or param == "prompt")


def test_long_pairs_are_truncated_on_request(reranker) -> None:
    server, _ = reranker
    body = {"query": QUERY, "documents": ["w1 " * 70], "truncate_prompt_tokens": 32}
    response = httpx.post(f"{server.url}/rerank", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["total_tokens"] == 32


def test_embedding_model_scores_by_cosine_similarity(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("tiny-bert-embed")
    model = write_tiny_encoder(folder, "bert", "cls_token", seed=6)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        vectors = {
            t: model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, 0] for t in [QUERY, *DOCUMENTS]
        }
    expected = [float(torch.cosine_similarity(vectors[QUERY], vectors[d], dim=0)) for d in DOCUMENTS]
    server = launch(tmp_path_factory.mktemp("embed-score-server"), str(folder), "--max-model-len", "64")
    try:
        server.wait_ready()
        body = httpx.post(
            f"{server.url}/score", json={"text_1": QUERY, "text_2": DOCUMENTS}, timeout=60
        ).json()
        assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-5)
        ranked = httpx.post(
            f"{server.url}/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60
        ).json()
        assert [r["index"] for r in ranked["results"]] == sorted(range(4), key=lambda i: -expected[i])
    finally:
        server.terminate()


def test_generate_model_refuses_scoring(server) -> None:
    for path, body, api in (
        ("/score", {"text_1": "a", "text_2": "b"}, "Score"),
        ("/rerank", {"query": "a", "documents": ["b"]}, "Score"),
        ("/classify", {"input": "a"}, "Classification"),
    ):
        response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert response.status_code == 400
        assert f"does not support {api} API" in response.json()["error"]["message"]


def test_classify_on_the_one_label_reranker(reranker) -> None:
    """vLLM serves /classify on a score model too: one class, its sigmoid."""
    server, _ = reranker
    body = httpx.post(f"{server.url}/classify", json={"input": DOCUMENTS[:2]}, timeout=60).json()
    assert [(d["index"], d["label"], d["num_classes"]) for d in body["data"]] == [
        (0, "LABEL_0", 1),
        (1, "LABEL_0", 1),
    ]
    assert all(0 < d["probs"][0] < 1 for d in body["data"]) and body["id"].startswith("classify-")


def test_classifier_serves_classify_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("tiny-classifier")
    labels = ["negative", "neutral", "positive"]
    model = write_tiny_encoder(folder, "xlm-roberta", seed=7, cross_encoder=True, labels=labels)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        expected = [model(**tokenizer(t, return_tensors="pt")).logits[0] for t in DOCUMENTS]
    server = launch(tmp_path_factory.mktemp("classify-server"), str(folder), "--max-model-len", "64")
    try:
        server.wait_ready()
        body = httpx.post(f"{server.url}/v1/classify", json={"input": DOCUMENTS}, timeout=60).json()
        for item, logits in zip(body["data"], expected):
            assert item["probs"] == pytest.approx(logits.softmax(-1).tolist(), abs=1e-5)
            assert item["label"] == labels[int(logits.argmax())] and item["num_classes"] == 3
        raw = httpx.post(
            f"{server.url}/classify", json={"input": DOCUMENTS[0], "use_activation": False}, timeout=60
        )
        assert raw.json()["data"][0]["probs"] == pytest.approx(expected[0].tolist(), abs=1e-4)
        for path, body in (
            ("/score", {"text_1": "w1", "text_2": "w2"}),
            ("/rerank", {"query": "w1", "documents": ["w2"]}),
            ("/v1/embeddings", {"input": "w1"}),
        ):
            response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
            assert response.status_code == 400 and "does not support" in response.json()["error"]["message"]
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def llm_reranker(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen3 causal LM served as Qwen3-Reranker is with vLLM: --hf-overrides turns it into a one-label
    classifier whose score is p("yes") against p("no") after the pair."""
    from tests.tiny_models import write_tiny_qwen

    folder = tmp_path_factory.mktemp("tiny-qwen3-reranker")
    model = write_tiny_qwen(folder, version=3, max_positions=256, seed=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    no, yes = tokenizer.convert_tokens_to_ids(["no", "yes"])
    texts = ["What is paged attention?", "Blocks of KV cache.", "Paris is in France.", "The moon orbits."]
    with torch.no_grad():
        scores = []
        for document in texts[1:]:
            last = model(**tokenizer(texts[0], document, return_tensors="pt")).logits[0, -1]
            scores.append(float(last[[no, yes]].softmax(-1)[1]))
    overrides = (
        '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"], '
        '"is_original_qwen3_reranker": true}'
    )
    server = launch(
        tmp_path_factory.mktemp("qwen3-rerank-server"), str(folder), "--served-model-name", "qwen3-rerank",
        "--max-model-len", "128", "--dtype", "float32", "--hf-overrides", overrides,
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server, texts, scores
    finally:
        server.terminate()


def test_qwen3_reranker_through_hf_overrides_serves_rerank(llm_reranker) -> None:
    server, texts, expected = llm_reranker
    body = httpx.post(
        f"{server.url}/v1/rerank", json={"query": texts[0], "documents": texts[1:]}, timeout=60
    ).json()
    order = sorted(range(3), key=lambda i: -expected[i])
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(
        [expected[i] for i in order], abs=1e-5
    )
    refused = httpx.post(
        f"{server.url}/v1/completions", json={"model": "qwen3-rerank", "prompt": "hi"}, timeout=60
    )
    assert refused.status_code == 400 and "does not support" in refused.json()["error"]["message"]
