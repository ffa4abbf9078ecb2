"""The version matrix data file, the check that applies it, version parsing and Helm release decoding."""

from __future__ import annotations

import base64
import json

import pytest

from pagedserve import __version__
from pagedserve.kube.chart_values import load_needs, needs_from_values
from pagedserve.kube.checks_gpu_operator import decode_helm_release
from pagedserve.kube.compat import StackVersions, check_version_matrix, load_matrix, release_needs
from pagedserve.kube.report import Status
from pagedserve.kube.versions import parse_version, version_at_least
from tests.kube.fake_apiserver import encode_helm_release

MODERN = StackVersions(
    cuda=(12, 4),
    kubernetes=(1, 30, 4),
    gpu_operator=(24, 3, 0),
    gpu_families=frozenset({"hopper"}),
    quantization="fp8",
)


def test_matrix_holds_the_seed_table() -> None:
    rows = {r.version: r for r in load_matrix().rows}
    assert list(rows) == ["0.8.4", "0.8.3", "0.8.2", "0.7.x"]
    assert (rows["0.8.4"].cuda, rows["0.8.4"].kubernetes_min, rows["0.8.4"].gpu_operator_min) == (
        "12.4",
        "1.29",
        "v24.3",
    )
    assert rows["0.8.4"].python == ("3.10", "3.12") and rows["0.8.4"].transformers == "4.48.0"
    assert (rows["0.8.2"].cuda, rows["0.8.2"].status) == ("12.1", "legacy")
    assert (rows["0.7.x"].kubernetes_min, rows["0.7.x"].status) == ("1.27", "not-recommended")


def test_our_release_maps_to_its_stack() -> None:
    needs = release_needs(__version__)
    assert needs.matches_vllm == "0.8.4"
    assert (needs.cuda_min, needs.kubernetes_min, needs.gpu_operator_min, needs.containerd_min) == (
        "12.1",
        "1.28",
        "v23.9.1",
        "1.7",
    )
    assert needs.python == ("3.10", "3.12") and needs.transformers_min == "4.45"
    with pytest.raises(ValueError, match="no entry"):
        release_needs("9.9.9")


def test_modern_stack_meets_the_recommended_row() -> None:
    assert check_version_matrix("0.8.4", MODERN).status is Status.PASS


@pytest.mark.parametrize(("engine", "words"), [("0.8.2", "legacy"), ("0.7.3", "not recommended")])
def test_legacy_and_not_recommended_engines_warn(engine: str, words: str) -> None:
    result = check_version_matrix(engine, MODERN)
    assert result.status is Status.WARN and words in result.observed


def test_hard_rule_fails_fp8_on_hopper_with_cuda_12_1() -> None:
    stack = StackVersions(
        cuda=(12, 1),
        kubernetes=(1, 30),
        gpu_operator=(24, 3),
        gpu_families=frozenset({"hopper"}),
        quantization="fp8",
    )
    result = check_version_matrix("0.8.3", stack)
    assert result.status is Status.FAIL and "FP8" in result.observed
    # Same cluster, no FP8: a legacy-level warning. On Ampere the rule does not apply.
    assert (
        check_version_matrix("0.8.3", StackVersions(**{**stack.__dict__, "quantization": "none"})).status
        is Status.WARN
    )
    ampere = StackVersions(**{**stack.__dict__, "gpu_families": frozenset({"ampere"})})
    assert check_version_matrix("0.8.3", ampere).status is Status.WARN
    # Unknown quantization (no values file): warn that FP8 would fail.
    unknown = StackVersions(**{**stack.__dict__, "quantization": None})
    assert "would fail" in check_version_matrix("0.8.3", unknown).observed


def test_cluster_level_below_every_row_fails() -> None:
    stack = StackVersions(
        cuda=(11, 8), kubernetes=(1, 26), gpu_operator=(23, 3), gpu_families=frozenset(), quantization=None
    )
    assert check_version_matrix("0.8.4", stack).status is Status.FAIL


def test_cluster_on_the_legacy_row_warns_to_upgrade_together() -> None:
    stack = StackVersions(
        cuda=(12, 2), kubernetes=(1, 28), gpu_operator=(24, 0), gpu_families=frozenset(), quantization="none"
    )
    result = check_version_matrix("0.8.4", stack)
    assert result.status is Status.WARN and "0.8.2 row (legacy)" in result.observed
    assert "together" in result.fix


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v1.29.3-eks-adc7111", (1, 29, 3)),
        ("containerd://1.7.12-0ubuntu2", (1, 7, 12)),
        ("cri-o://1.29.1", (1, 29, 1)),
        ("v23.9.1", (23, 9, 1)),
        ("12.4", (12, 4)),
        ("unknown", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_version(text) == expected


def test_version_at_least_compares_given_components() -> None:
    assert version_at_least((1, 29, 3), "1.29") and version_at_least((24,), "v23.9.1")
    assert not version_at_least((23, 9, 0), "v23.9.1") and not version_at_least((1, 6, 28), "1.7")


def test_decode_helm_release_gzip_and_plain() -> None:
    release = {
        "name": "gpu-operator",
        "version": 3,
        "chart": {"metadata": {"name": "gpu-operator", "version": "v24.6.1"}},
    }
    secret = {
        "metadata": {"name": "sh.helm.release.v1.gpu-operator.v3"},
        "data": {"release": encode_helm_release(release)},
    }
    assert decode_helm_release(secret) == release
    plain = base64.b64encode(base64.b64encode(json.dumps(release).encode())).decode()
    assert decode_helm_release({"metadata": {}, "data": {"release": plain}}) == release
    with pytest.raises(ValueError, match="no release key"):
        decode_helm_release({"metadata": {"name": "x"}, "data": {}})


def test_values_reading_follows_the_chart_layout() -> None:
    needs = needs_from_values(
        {
            "replicaCount": 1,
            "autoscaling": {"enabled": True, "maxReplicas": 6},
            "gpu": {"runtimeClassName": "nvidia"},
            "monitoring": {"serviceMonitor": {"enabled": True}},
            "prometheusRule": {"enabled": True},  # the top-level spelling is read too
        },
        "values.yaml",
    )
    assert needs.replicas == 6 and needs.runtime_class_name == "nvidia"
    assert (
        needs.service_monitor is True
        and needs.prometheus_rule is True
        and needs.ingress_class_name == "nginx"
    )
    assert load_needs(None).known is False


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"engine": {"tensorParallelSize": True}}, "engine.tensorParallelSize"),
        ({"gpu": {"enabled": "yes"}}, "gpu.enabled"),
        (["not", "a", "mapping"], "mapping"),
    ],
)
def test_bad_values_name_the_field(values: object, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        needs_from_values(values, "values.yaml")  # type: ignore[arg-type]
