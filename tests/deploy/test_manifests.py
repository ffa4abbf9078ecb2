"""deploy/manifests/ is the chart rendered with default values; this fails when they drift apart."""

from __future__ import annotations

import difflib

import pytest
import yaml

from tests.deploy.chart import MANIFESTS_FILE
from tests.deploy.render_manifests import rendered_manifests

pytestmark = pytest.mark.helm


def test_plain_manifests_match_the_chart() -> None:
    expected = rendered_manifests()
    actual = MANIFESTS_FILE.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "committed", "chart")
        )
        pytest.fail(
            f"{MANIFESTS_FILE} drifted from the chart; run `.venv/bin/python -m tests.deploy.render_manifests`\n{diff[:4000]}"
        )


def test_plain_manifests_are_namespace_free_and_without_helm_test_pod() -> None:
    objects = [doc for doc in yaml.safe_load_all(MANIFESTS_FILE.read_text()) if doc]
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= {o["kind"] for o in objects}
    assert not any("namespace" in o["metadata"] for o in objects), (
        "kubectl apply -n must choose the namespace"
    )
    assert not any(o["kind"] == "Pod" for o in objects)
