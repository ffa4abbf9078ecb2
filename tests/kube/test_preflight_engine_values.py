"""preflight's engine-values check against the fake API server: values the engine would refuse at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube.fake_apiserver import healthy_cluster
from tests.kube.test_preflight_cluster import FULL_VALUES, check, run_preflight


@pytest.mark.parametrize(
    "engine,refused",
    [
        ({"tensorParallelSize": 2}, "refuses tensor_parallel_size > 1"),
        ({"quantization": "fp8"}, "refuses quantization 'fp8'"),
        ({"quantization": "gguf"}, None),
        ({"quantization": "awq"}, None),
        ({"quantization": "gptq"}, None),
        ({"quantization": "none", "tensorParallelSize": 1}, None),
    ],
)
def test_values_the_engine_would_refuse_fail_before_the_install(tmp_path: Path, engine, refused) -> None:
    """The engine exits at startup on these (a CrashLoopBackOff after the install): preflight says why first."""
    code, report = run_preflight(tmp_path, healthy_cluster(), {**FULL_VALUES, "engine": engine})
    result = check(report, "engine-values")
    if refused is None:
        assert result["status"] == "PASS" and code == 0
    else:
        assert result["status"] == "FAIL" and refused in result["observed"] and code == 1
