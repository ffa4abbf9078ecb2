"""The chart lints clean and renders over the ci/ values matrix into objects valid for Kubernetes 1.29 and the
newest version kubernetes-validate knows (strict: unknown fields are errors). Real helm, no cluster needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate import utils as kube_validate

from tests.deploy.chart import CHART_DIR, by_kind, ci_values_files, render, run_helm

pytestmark = pytest.mark.helm

OLDEST_SUPPORTED = "1.29.0"
NEWEST_KNOWN = kube_validate.latest_version()
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "LeaderWorkerSet"}
REQUIRED_SCENARIOS = {
    "gpu",
    "cpu",
    "hpa",
    "ingress-tls",
    "existing-claim",
    "keda",
    "everything-off",
    "multinode",
}


def test_ci_matrix_covers_required_scenarios() -> None:
    scenarios = {path.name.removesuffix("-values.yaml") for path in ci_values_files()}
    assert REQUIRED_SCENARIOS <= scenarios, f"missing ci/ scenarios: {REQUIRED_SCENARIOS - scenarios}"


@pytest.mark.parametrize("values_file", [None, *ci_values_files()], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict_is_clean(values_file: Path | None) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    if values_file:
        args += ["--values", str(values_file)]
    output = run_helm(args)
    assert "0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def _validate_crd_object(obj: dict[str, Any], kube_version: str) -> None:
    # No OpenAPI schema ships for CRDs in kubernetes-validate: check the fields their controllers require.
    assert obj["metadata"]["name"]
    if obj["kind"] == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["spec"]["selector"]["matchLabels"] and obj["spec"]["endpoints"][0]["port"] == "http"
    elif obj["kind"] == "PrometheusRule":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        rules = obj["spec"]["groups"][0]["rules"]
        assert all({"alert", "expr", "for", "labels", "annotations"} <= set(rule) for rule in rules)
    elif obj["kind"] == "LeaderWorkerSet":
        # leaderworkerset.x-k8s.io/v1: its two pod templates are core PodTemplateSpecs, validated as such.
        assert obj["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
        group = obj["spec"]["leaderWorkerTemplate"]
        assert group["size"] >= 2 and group["restartPolicy"] in ("RecreateGroupOnPodRestart", "None")
        assert obj["spec"]["startupPolicy"] in ("LeaderCreated", "LeaderReady")
        for role in ("leaderTemplate", "workerTemplate"):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                        "template": group[role]}  # fmt: skip
            kube_validate.validate(template, kube_version, strict=True)
    elif obj["kind"] == "ScaledObject":
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "prometheus" and {"serverAddress", "query", "threshold"} <= set(
            trigger["metadata"]
        )


@pytest.mark.parametrize("kube_version", [OLDEST_SUPPORTED, NEWEST_KNOWN])
@pytest.mark.parametrize("values_file", [None, *ci_values_files()], ids=lambda p: p.name if p else "defaults")
def test_rendered_objects_validate(values_file: Path | None, kube_version: str) -> None:
    objects = render([values_file] if values_file else [])
    assert (by_kind(objects, "Deployment") or by_kind(objects, "LeaderWorkerSet")) and by_kind(
        objects, "Service"
    )
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            try:
                _validate_crd_object(obj, kube_version)
            except kube_validate.ValidationError as error:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {kube_version}: {error}"
                )
            continue
        try:
            kube_validate.validate(obj, kube_version, strict=True)
        except kube_validate.ValidationError as error:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {kube_version}: {error}"
            )
