"""The engine processes' OpenMP wait policy: a short spin by default, the user's setting when there is one."""

from __future__ import annotations

import pytest

from pagedserve import envs


def test_engine_processes_spin_briefly_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("PAGEDSERVE_CPU_THREADS", "3")
    env = envs.engine_process_env()
    assert env["GOMP_SPINCOUNT"] == envs.ENGINE_GOMP_SPINCOUNT == "1000"
    assert env["PAGEDSERVE_CPU_THREADS"] == "3"  # the rest is inherited


@pytest.mark.parametrize("name,value", [("GOMP_SPINCOUNT", "infinite"), ("OMP_WAIT_POLICY", "ACTIVE")])
def test_the_users_wait_policy_wins(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv(name, value)
    env = envs.engine_process_env()
    assert env[name] == value
    assert name == "GOMP_SPINCOUNT" or "GOMP_SPINCOUNT" not in env
