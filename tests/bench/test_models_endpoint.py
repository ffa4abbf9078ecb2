"""`/v1/models` as vLLM (and pagedserve) and llama.cpp's server answer it: the client finds the model in both."""

from __future__ import annotations

import asyncio

import pytest

from pagedserve.benchmark.server_info import fetch_served_model, parse_models_response
from tests.bench.bench_stub import LLAMACPP_MODELS, VLLM_MODELS


def test_vllm_shape() -> None:
    served = parse_models_response(VLLM_MODELS)
    assert (served.id, served.root, served.max_model_len, served.server_kind) == (
        "stub-model", "stub-model", 2048, "vllm"
    )  # fmt: skip


def test_llamacpp_shape_with_data_and_models() -> None:
    served = parse_models_response(LLAMACPP_MODELS)
    assert served.id == "/models/stub.gguf" and served.server_kind == "llama.cpp"
    assert served.root is None and served.max_model_len == 8192  # from meta.n_ctx_train


def test_older_llamacpp_shape_with_models_only() -> None:
    served = parse_models_response({"models": [{"name": "smol", "model": "smol.gguf"}]})
    assert served.id == "smol.gguf" and served.server_kind == "llama.cpp"


@pytest.mark.parametrize(
    "body", [{"object": "list", "data": []}, {"data": [{"object": "model"}]}, [], {"x": 1}]
)
def test_no_model_listed_is_a_clear_error(body: object) -> None:
    with pytest.raises(ValueError, match="/v1/models"):
        parse_models_response(body)


@pytest.mark.parametrize("models", [VLLM_MODELS, LLAMACPP_MODELS])
def test_fetch_over_http(stub_server, models: dict) -> None:
    server = stub_server(models=models)
    served = asyncio.run(fetch_served_model(server.url))
    assert served.id == models["data"][0]["id"]


def test_fetch_http_error_is_a_clear_error(stub_server) -> None:
    server = stub_server()
    with pytest.raises(ValueError, match="HTTP 404"):
        asyncio.run(fetch_served_model(server.url + "/nothing-here"))
