"""The chart lints clean and renders over the ci/ values matrix into objects valid for Kubernetes 1.29 and the
newest version kubernetes-validate knows (strict: unknown fields are errors). Real helm, no cluster needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate import utils as kube_validate

from tests.deploy import crd_schemas
from tests.deploy.chart import CHART_DIR, by_kind, ci_values_files, render, run_helm

pytestmark = pytest.mark.helm

OLDEST_SUPPORTED = "1.29.0"
NEWEST_KNOWN = kube_validate.latest_version()
REQUIRED_SCENARIOS = {
    "gpu",
    "cpu",
    "hpa",
    "ingress-tls",
    "gateway",
    "inference-extension",
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
    # kubernetes-validate has no schema for custom kinds: our own JSON Schemas (tests/deploy/crd_schemas/) check
    # them, closed objects included, so a misspelled key fails.
    problems = crd_schemas.errors(obj)
    assert not problems, f"{obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(problems)
    if obj["kind"] == "LeaderWorkerSet":
        # Its two pod templates are core PodTemplateSpecs, validated as such.
        group = obj["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                        "template": group[role]}  # fmt: skip
            kube_validate.validate(template, kube_version, strict=True)


@pytest.mark.parametrize("kube_version", [OLDEST_SUPPORTED, NEWEST_KNOWN])
@pytest.mark.parametrize("values_file", [None, *ci_values_files()], ids=lambda p: p.name if p else "defaults")
def test_rendered_objects_validate(values_file: Path | None, kube_version: str) -> None:
    objects = render([values_file] if values_file else [])
    assert (by_kind(objects, "Deployment") or by_kind(objects, "LeaderWorkerSet")) and by_kind(
        objects, "Service"
    )
    for obj in objects:
        if obj["kind"] in crd_schemas.CRD_KINDS:
            try:
                _validate_crd_object(obj, kube_version)
            except kube_validate.ValidationError as error:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {kube_version}: {error}"
                )
            continue
        try:
            kube_validate.validate(obj, kube_version, strict=True)
        except kube_validate.SchemaNotFoundError:
            pytest.fail(
                f"no schema for {obj['apiVersion']} {obj['kind']}: add one to tests/deploy/crd_schemas/"
            )
        except kube_validate.ValidationError as error:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {kube_version}: {error}"
            )


def test_ci_matrix_renders_every_custom_kind_that_has_a_schema() -> None:
    rendered = {obj["kind"] for path in ci_values_files() for obj in render([path])}
    assert crd_schemas.CRD_KINDS <= rendered, f"no ci/ scenario renders {crd_schemas.CRD_KINDS - rendered}"


def _open_objects(schema: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            found.append(path or "<root>")
        for key, value in schema.items():
            # Conditions (if/then/not) add constraints to an object whose keys are already closed.
            if key not in ("if", "then", "not"):
                found += _open_objects(value, f"{path}.{key}" if path else key)
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found += _open_objects(value, f"{path}.{index}")
    return found


@pytest.mark.parametrize("kind", sorted(crd_schemas.CRD_KINDS))
def test_crd_schemas_close_every_object(kind: str) -> None:
    # An object schema that lists its properties must refuse others, or a misspelled key would pass.
    assert _open_objects(crd_schemas.schemas()[kind]) == []


def _rendered(values_file: str, kind: str) -> dict[str, Any]:
    return next(o for o in render([CHART_DIR / "ci" / values_file]) if o["kind"] == kind)


def _rename(obj: dict[str, Any], path: str, new_key: str) -> None:
    *parents, key = path.split(".")
    for part in parents:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    obj[new_key] = obj.pop(key)


# A key of each custom kind, misspelled as a person would, one or more levels down.
MISSPELLINGS = [
    ("gateway-values.yaml", "HTTPRoute", "spec.rules.0.timeouts", "timeout"),
    ("gateway-values.yaml", "HTTPRoute", "spec.parentRefs.0.sectionName", "section"),
    ("inference-extension-values.yaml", "HTTPRoute", "spec.rules.0.backendRefs.0.kind", "Kind"),
    ("inference-extension-values.yaml", "InferencePool", "spec.endpointPickerRef.failureMode", "failMode"),
    ("inference-extension-values.yaml", "InferencePool", "spec.targetPorts", "targetPort"),
    ("inference-extension-values.yaml", "InferenceObjective", "spec.poolRef", "poolref"),
    ("hpa-values.yaml", "ServiceMonitor", "spec.endpoints.0.scrapeTimeout", "scrapeTimout"),
    ("hpa-values.yaml", "PrometheusRule", "spec.groups.0.rules.0.for", "for_"),
    ("keda-values.yaml", "ScaledObject", "spec.triggers.0.metricType", "metrictype"),
    ("multinode-values.yaml", "LeaderWorkerSet", "spec.leaderWorkerTemplate.restartPolicy", "restartpolicy"),
]


@pytest.mark.parametrize(("values_file", "kind", "path", "misspelled"), MISSPELLINGS)
def test_misspelled_key_of_a_custom_kind_fails_validation(
    values_file: str, kind: str, path: str, misspelled: str
) -> None:
    obj = _rendered(values_file, kind)
    assert crd_schemas.errors(obj) == []
    _rename(obj, path, misspelled)
    problems = crd_schemas.errors(obj)
    assert any(f"'{misspelled}' was unexpected" in problem for problem in problems), problems


def test_custom_kinds_refuse_bad_values() -> None:
    pool = _rendered("inference-extension-values.yaml", "InferencePool")
    pool["spec"]["endpointPickerRef"]["failureMode"] = "FailSafe"
    pool["spec"]["targetPorts"].append({"number": 8000})
    problems = "\n".join(crd_schemas.errors(pool))
    assert "'FailSafe' is not one of" in problems and "non-unique elements" in problems
    route = _rendered("gateway-values.yaml", "HTTPRoute")
    del route["spec"]["rules"][0]["backendRefs"][0]["port"]
    route["spec"]["rules"][0]["timeouts"]["request"] = "30 minutes"
    problems = "\n".join(crd_schemas.errors(route))
    assert "'port' is a required property" in problems and "does not match" in problems
