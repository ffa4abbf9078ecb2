"""Fixtures for the benchmark client's tests; the stub servers themselves live in bench_stub.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.bench.bench_stub import VLLM_RESULT_KEYS, StubBehaviour, StubServer, assert_png_drawn


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubServer]]:
    """Call with StubBehaviour fields; the server is stopped after the test."""
    started: list[StubServer] = []

    def start(**kwargs: Any) -> StubServer:
        server = StubServer(StubBehaviour(**kwargs))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def bundled_tokenizer() -> Any:
    from pagedserve.benchmark.model_files import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture
def vllm_result_keys() -> list[str]:
    return list(VLLM_RESULT_KEYS)


@pytest.fixture
def png_check() -> Callable[[Any], None]:
    return assert_png_drawn
