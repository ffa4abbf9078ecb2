"""preflight's Gateway API and Inference Extension CRD checks against the fake API server: an HTTPRoute,
InferencePool or InferenceObjective whose CRD the cluster lacks (or serves in another version) fails `helm install`
with "no matches for kind", so preflight says it first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.kube.fake_apiserver import healthy_cluster
from tests.kube.test_preflight_cluster import FULL_VALUES, check, run_preflight

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
GATEWAY_VALUES = {
    **FULL_VALUES,
    "gateway": {"httpRoute": {"parentRefs": [{"name": "inference-gateway", "namespace": "gateway-system"}]}},
    "inferenceExtension": {"enabled": True, "objectives": [{"name": "interactive", "priority": 10}]},
}


def _crd(plural: str, group: str, kind: str, versions: list[str]) -> tuple[str, dict[str, Any]]:
    name = f"{plural}.{group}"
    return CRD_PATH + name, {
        "kind": "CustomResourceDefinition",
        "apiVersion": "apiextensions.k8s.io/v1",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "names": {"plural": plural, "kind": kind},
            "scope": "Namespaced",
            "versions": [{"name": v, "served": True, "storage": i == 0} for i, v in enumerate(versions)],
        },
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }


def _cluster(*crds: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {**healthy_cluster(), **dict(crds)}


def test_gateway_values_fail_without_the_crds(tmp_path: Path) -> None:
    code, report = run_preflight(tmp_path, healthy_cluster(), GATEWAY_VALUES)
    assert code == 1
    for name, crd in [
        ("crd-httproutes", "httproutes.gateway.networking.k8s.io"),
        ("crd-inferencepools", "inferencepools.inference.networking.k8s.io"),
        ("crd-inferenceobjectives", "inferenceobjectives.llm-d.ai"),
    ]:
        result = check(report, name)
        assert result["status"] == "FAIL" and f"CRD {crd} not installed" == result["observed"], result
        assert "kubectl apply" in result["fix"]


def test_gateway_values_pass_with_the_crds_serving_the_chart_versions(tmp_path: Path) -> None:
    cluster = _cluster(
        _crd("httproutes", "gateway.networking.k8s.io", "HTTPRoute", ["v1", "v1beta1"]),
        _crd("inferencepools", "inference.networking.k8s.io", "InferencePool", ["v1"]),
        _crd("inferenceobjectives", "llm-d.ai", "InferenceObjective", ["v1alpha2"]),
    )
    code, report = run_preflight(tmp_path, cluster, GATEWAY_VALUES)
    assert code == 0, [c for c in report["checks"] if c["status"] != "PASS"]
    assert check(report, "crd-httproutes")["observed"].endswith("serves v1")


def test_a_crd_serving_an_older_version_fails_naming_what_it_serves(tmp_path: Path) -> None:
    cluster = _cluster(
        _crd("httproutes", "gateway.networking.k8s.io", "HTTPRoute", ["v1beta1"]),
        _crd(
            "inferencepools", "inference.networking.x-k8s.io", "InferencePool", ["v1alpha2"]
        ),  # pre-v1 group
        _crd("inferenceobjectives", "llm-d.ai", "InferenceObjective", ["v1alpha2"]),
    )
    code, report = run_preflight(tmp_path, cluster, GATEWAY_VALUES)
    assert code == 1
    route = check(report, "crd-httproutes")
    assert route["status"] == "FAIL" and "serves v1beta1, not v1" in route["observed"]
    assert check(report, "crd-inferencepools")["status"] == "FAIL"  # the v1 group's CRD is absent
    assert check(report, "crd-inferenceobjectives")["status"] == "PASS"


def test_the_objective_crd_follows_objective_api_version(tmp_path: Path) -> None:
    values = {**GATEWAY_VALUES, "gateway": {"httpRoute": {"enabled": False}}}
    values["inferenceExtension"] = {
        **GATEWAY_VALUES["inferenceExtension"],
        "objectiveApiVersion": "inference.networking.x-k8s.io/v1alpha2",
    }
    cluster = _cluster(
        _crd("inferencepools", "inference.networking.k8s.io", "InferencePool", ["v1"]),
        _crd("inferenceobjectives", "llm-d.ai", "InferenceObjective", ["v1alpha2"]),
    )
    code, report = run_preflight(tmp_path, cluster, values)
    objectives = check(report, "crd-inferenceobjectives")
    assert objectives["status"] == "FAIL" and "inference.networking.x-k8s.io" in objectives["observed"]
    assert "objectiveApiVersion" in objectives["fix"] and code == 1
    assert check(report, "crd-httproutes")["status"] == "PASS"  # disabled: not needed


def test_no_route_without_parent_refs_and_no_objectives_without_objectives(tmp_path: Path) -> None:
    """The chart renders no HTTPRoute without parentRefs and no InferenceObjective without objectives."""
    values = {**FULL_VALUES, "inferenceExtension": {"enabled": False, "objectives": [{"name": "batch"}]}}
    code, report = run_preflight(tmp_path, healthy_cluster(), values)
    assert code == 0
    assert "not needed by these values" in check(report, "crd-httproutes")["observed"]
    assert "not needed by these values" in check(report, "crd-inferencepools")["observed"]
    assert not [c for c in report["checks"] if c["name"] == "crd-inferenceobjectives"]


def test_without_values_missing_gateway_crds_warn(tmp_path: Path) -> None:
    code, report = run_preflight(tmp_path, healthy_cluster())
    assert check(report, "crd-httproutes")["status"] == "WARN"
    assert "needed only if you enable it" in check(report, "crd-inferencepools")["observed"]
