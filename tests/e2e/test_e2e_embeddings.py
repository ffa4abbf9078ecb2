"""Embeddings on a real server (--runner pooling) through the openai SDK: a tiny random Qwen3 folder, each vector
checked against transformers' last hidden state of the same prompt (L2-normalized, vLLM's rule for causal models
served as embedders); base64 encoding, batching, vLLM's refusals, and the metrics; a BERT encoder served as is."""

from __future__ import annotations

import base64
import pathlib
import struct

import httpx
import openai
import pytest
import torch
import transformers

from tests.tiny_models import bundled_tokenizer, write_tiny_encoder, write_tiny_qwen

from .conftest import launch, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow]

PROMPTS = [
    "Hello world",
    "The capital of France is Paris, a city of light and of long dinners.",
    "Hello world",
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model = write_tiny_qwen(folder, version=3)
    server = launch(
        tmp_path_factory.mktemp("embedding-server"), str(folder), "--runner", "pooling",
        "--served-model-name", "tiny-embed", "--dtype", "float32",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server, model
    finally:
        server.terminate()


def _reference(model, text: str) -> torch.Tensor:
    ids = bundled_tokenizer()(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.nn.functional.normalize(model.model(ids).last_hidden_state[0, -1], dim=-1)


def test_embeddings_are_the_last_hidden_state_normalized(embedder) -> None:
    server, model = embedder
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    result = client.embeddings.create(model="tiny-embed", input=PROMPTS)
    assert [d.index for d in result.data] == [0, 1, 2] and result.object == "list"
    for text, item in zip(PROMPTS, result.data):
        got = torch.tensor(item.embedding)
        assert got.shape == (64,) and abs(float(got.norm()) - 1) < 1e-5
        assert torch.allclose(got, _reference(model, text), atol=1e-5)
    tokens = sum(len(bundled_tokenizer()(t).input_ids) for t in PROMPTS)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    # The third prompt repeats the first: the same vector (its prefix came from the cache).
    assert result.data[0].embedding == pytest.approx(result.data[2].embedding, abs=1e-6)


def test_base64_token_ids_and_unnormalized(embedder) -> None:
    server, model = embedder
    ids = bundled_tokenizer()("Hello world").input_ids
    raw = httpx.post(
        f"{server.url}/v1/embeddings", json={"input": [ids], "encoding_format": "base64"}, timeout=60
    ).json()
    vector = struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"]))
    assert torch.allclose(torch.tensor(vector), _reference(model, "Hello world"), atol=1e-5)
    plain = httpx.post(
        f"{server.url}/v1/embeddings", json={"input": "Hello world", "normalize": False}, timeout=60
    ).json()
    assert abs(float(torch.tensor(plain["data"][0]["embedding"]).norm()) - 1) > 1e-3  # vLLM's normalize=false


def test_refusals_are_vllms(embedder, tmp_path: pathlib.Path) -> None:
    server, _ = embedder
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    with pytest.raises(openai.BadRequestError, match="The model does not support Chat Completions API"):
        client.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not support matryoshka"):
        client.embeddings.create(model="tiny-embed", input="hi", dimensions=16)
    with pytest.raises(openai.BadRequestError, match="must not be empty"):
        client.embeddings.create(model="tiny-embed", input="")
    assert metric_value(server, "vllm:prompt_tokens_total") > 0
    assert metric_value(server, "vllm:generation_tokens_total") == 0  # embeddings generate nothing


def test_bert_encoder_served_without_flags(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A sentence-transformers BERT folder (mean pooling) served as vLLM serves it: no --runner (an encoder's auto
    is pooling), vectors equal to transformers' mean-pooled states; a prompt past its 64 learned positions is a
    400, not a crash."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    model = write_tiny_encoder(folder, "bert", "mean_tokens")
    server = launch(
        tmp_path_factory.mktemp("bert-server"),
        str(folder),
        "--served-model-name",
        "tiny-bert",
        "--max-model-len",
        "64",
    )  # BASE_ARGS' --max-model-len is past the model's positions
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        assert client.models.list().data[0].model_extra["max_model_len"] == 64
        texts = ["w1 w2 w3", "w7 w8 w9 w10 w11 w12"]
        result = client.embeddings.create(model="tiny-bert", input=texts)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        for text, item in zip(texts, result.data):
            with torch.no_grad():
                hidden = model(tokenizer(text, return_tensors="pt").input_ids).last_hidden_state[0]
            expected = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
            assert torch.allclose(torch.tensor(item.embedding), expected, atol=1e-5)
        assert result.usage.prompt_tokens == 5 + 8  # [CLS] ... [SEP]
        with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens"):
            client.embeddings.create(model="tiny-bert", input=" ".join(["w3"] * 63))  # 65 with [CLS], [SEP]
        full = client.embeddings.create(model="tiny-bert", input=" ".join(["w3"] * 62))  # all 64 positions
        assert full.usage.prompt_tokens == 64 and len(full.data[0].embedding) == 64
        with pytest.raises(openai.BadRequestError, match="does not support Chat Completions"):
            client.chat.completions.create(model="tiny-bert", messages=[{"role": "user", "content": "w1"}])
    finally:
        server.terminate()
