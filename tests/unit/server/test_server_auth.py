"""API key auth: every route the app has (enumerated from app.routes) is denied without the key, except the
probes (and /metrics unless --metrics-require-auth)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from pagedserve.server.app import route_table
from pagedserve.server.auth import PROBE_PATHS

from .conftest import API_KEY


def all_routes(client: TestClient) -> list[tuple[str, str]]:
    return route_table(client.app)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def secured(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory({"api_key": API_KEY})


@pytest.fixture(scope="module")
def secured_metrics(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory({"api_key": API_KEY, "metrics_require_auth": True})


def test_route_list_is_complete(secured: TestClient) -> None:
    paths = {path for _, path in all_routes(secured)}
    expected = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize"}
    expected |= {"/v1/embeddings", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/classify"}
    assert expected | PROBE_PATHS | {"/metrics", "/version", "/load", "/openapi.json"} <= paths


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Bearer {API_KEY}x", API_KEY, f"Basic {API_KEY}", ""]
)
def test_every_non_probe_route_needs_the_key(secured: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in all_routes(secured):
        response = secured.request(method, path, headers=headers, json={})
        if path in PROBE_PATHS or path == "/metrics":
            assert response.status_code != 401, (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert API_KEY not in response.text
        assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_paths_denied_too(secured: TestClient) -> None:
    assert secured.get("/v2/secret").status_code == 401
    assert secured.post("/admin", json={}).status_code == 401


def test_the_key_opens_every_route(secured: TestClient) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for method, path in all_routes(secured):
        assert secured.request(method, path, headers=headers, json={}).status_code != 401, (method, path)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert secured.post("/v1/chat/completions", json=chat, headers=headers).status_code == 200


def test_metrics_can_require_auth(secured_metrics: TestClient) -> None:
    assert secured_metrics.get("/metrics").status_code == 401
    ok = secured_metrics.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    for probe in PROBE_PATHS:
        assert secured_metrics.get(probe).status_code == 200


def test_no_key_configured_means_open(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 200
