"""preflight's engine-values check against the fake API server: values the engine would refuse at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube.fake_apiserver import healthy_cluster
from tests.kube.test_preflight_cluster import FULL_VALUES, check, run_preflight


@pytest.mark.parametrize(
    "engine,refused",
    [
        ({"tensorParallelSize": 2}, "runs tensor_parallel_size > 1 on CPUs only"),
        ({"quantization": "bitsandbytes"}, "refuses quantization 'bitsandbytes'"),
        ({"quantization": "fp8"}, None),
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


LWS_CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/leaderworkersets.leaderworkerset.x-k8s.io"


def _lws_crd(version: str = "v1") -> dict:
    return {
        "kind": "CustomResourceDefinition",
        "apiVersion": "apiextensions.k8s.io/v1",
        "metadata": {"name": "leaderworkersets.leaderworkerset.x-k8s.io"},
        "spec": {
            "group": "leaderworkerset.x-k8s.io",
            "names": {"plural": "leaderworkersets", "kind": "LeaderWorkerSet"},
            "scope": "Namespaced",
            "versions": [{"name": version, "served": True, "storage": True}],
        },
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }


def test_multi_node_values_need_the_leader_worker_set_crd_and_cpu_mode(tmp_path: Path) -> None:
    values = {
        **FULL_VALUES,
        "gpu": {"enabled": False},
        "multiNode": {"enabled": True, "nodes": 2},
        "engine": {"tensorParallelSize": 2},
    }
    code, report = run_preflight(tmp_path, healthy_cluster(), values)
    lws = check(report, "crd-leaderworkerset")
    assert lws["status"] == "FAIL" and "not installed" in lws["observed"] and code == 1
    assert check(report, "engine-values")["status"] == "PASS"  # tensor parallelism on CPUs runs
    cluster = {**healthy_cluster(), LWS_CRD: _lws_crd()}
    (tmp_path / "with-lws").mkdir()
    code, report = run_preflight(tmp_path / "with-lws", cluster, values)
    assert check(report, "crd-leaderworkerset")["status"] == "PASS"
    # An LWS release older than the v1 API the chart renders: the install would fail with "no matches for kind".
    (tmp_path / "old-lws").mkdir()
    cluster = {**healthy_cluster(), LWS_CRD: _lws_crd("v1alpha1")}
    code, report = run_preflight(tmp_path / "old-lws", cluster, values)
    lws = check(report, "crd-leaderworkerset")
    assert lws["status"] == "FAIL" and "serves v1alpha1, not v1" in lws["observed"] and code == 1
