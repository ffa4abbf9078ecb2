"""Fixtures of the deployment tests. Tools are installed on demand; a missing tool fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.tools import ensure_helm, ensure_nginx, ensure_prometheus, ensure_promtool


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="session")
def promtool() -> Path:
    return ensure_promtool()


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return ensure_prometheus()


@pytest.fixture(scope="session")
def nginx_binary() -> Path:
    return ensure_nginx()
