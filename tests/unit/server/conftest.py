"""Fixtures: the real app in-process over a FakeLLMEngine (see fake_engine.py), driven by Starlette's
TestClient (which runs the app's lifespan: load, warm-up, shutdown)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pagedserve.config import EngineConfig, SchedulerConfig
from pagedserve.engine.async_engine import AsyncEngine
from pagedserve.model_config import ModelConfig
from pagedserve.server.app import create_app
from pagedserve.server_config import ServerConfig

from .fake_engine import FakeLLMEngine, bundled_tokenizer

MODEL = "SmolLM2-135M-Instruct"
API_KEY = "test-key-123"


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready: {client.get('/ready').text}")


def make_client(
    server: dict[str, Any] | None = None,
    *,
    max_model_len: int = 512,
    max_num_seqs: int = 256,
    stall_timeout: float | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    holder: dict[str, Any] | None = None,
) -> TestClient:
    """A TestClient over a fresh app; `holder` receives the FakeLLMEngine and AsyncEngine for inspection."""
    config = ServerConfig(**(server or {}))
    engine_config = EngineConfig(
        model=ModelConfig(max_model_len=max_model_len), scheduler=SchedulerConfig(max_num_seqs=max_num_seqs)
    )

    def factory() -> AsyncEngine:
        fake = FakeLLMEngine(engine_config, **(engine_kwargs or {}))
        engine = AsyncEngine(fake, stall_timeout=stall_timeout)
        if holder is not None:
            holder["fake"], holder["engine"] = fake, engine
        return engine

    return TestClient(create_app(config, factory, [MODEL]), raise_server_exceptions=False)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return bundled_tokenizer()


@pytest.fixture(scope="module")
def client_factory() -> Iterator[Callable[..., TestClient]]:
    """Start apps that are shut down at the end of the module."""
    clients: list[TestClient] = []

    def start(*args: Any, **kwargs: Any) -> TestClient:
        client = make_client(*args, **kwargs)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    """A shared app with default settings (no API key)."""
    return client_factory()
