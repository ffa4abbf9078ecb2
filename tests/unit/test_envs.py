"""Environment variables are validated where they are read (pagedserve/envs.py): a bad value is a ValueError
naming the variable."""

from __future__ import annotations

import pytest

from pagedserve import envs


def test_tp_timeout_defaults_to_ten_minutes_and_refuses_nonsense(monkeypatch) -> None:
    monkeypatch.delenv("PAGEDSERVE_TP_TIMEOUT_S", raising=False)
    assert envs.tp_timeout_s() == 600.0
    monkeypatch.setenv("PAGEDSERVE_TP_TIMEOUT_S", "2.5")
    assert envs.tp_timeout_s() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv("PAGEDSERVE_TP_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="PAGEDSERVE_TP_TIMEOUT_S must be a number of seconds > 0"):
            envs.tp_timeout_s()
