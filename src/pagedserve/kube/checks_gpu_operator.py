"""The NVIDIA GPU operator check: its pods, and its version from the Helm release record (or image tag)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.cluster import ClusterSnapshot
from pagedserve.kube.compat import ReleaseNeeds
from pagedserve.kube.report import CheckResult, Status
from pagedserve.kube.versions import format_version, parse_version, version_at_least

GPU_OPERATOR_CHART = "gpu-operator"
GPU_OPERATOR_INSTALL = (
    "helm install --wait gpu-operator -n gpu-operator --create-namespace nvidia/gpu-operator "
    "(https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/getting-started.html)"
)


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def decode_helm_release(secret: dict[str, Any]) -> dict[str, Any]:
    """Helm 3 stores a release as base64(gzip(JSON)) in the Secret's `release` key (which the API base64s again)."""
    data = (secret.get("data") or {}).get("release")
    if not data:
        raise ValueError(f"secret {_name(secret)} has no release key")
    payload = base64.b64decode(base64.b64decode(data))
    if payload[:3] == b"\x1f\x8b\x08":  # gzip magic; very old Helm 3 releases are plain JSON
        payload = gzip.decompress(payload)
    return json.loads(payload)


def _operator_release(snapshot: ClusterSnapshot) -> tuple[dict[str, Any] | None, list[str]]:
    """The deployed gpu-operator Helm release with the highest revision, and any records that failed to decode."""
    best, problems = None, []
    for secret in snapshot.helm_release_secrets:
        labels = secret.get("metadata", {}).get("labels") or {}
        if labels.get("status") != "deployed":
            continue
        try:
            release = decode_helm_release(secret)
        except (ValueError, OSError, EOFError) as exc:
            problems.append(f"{_name(secret)}: {exc}")
            continue
        chart = release.get("chart", {}).get("metadata", {})
        if chart.get("name") != GPU_OPERATOR_CHART:
            continue
        if best is None or int(release.get("version", 0)) > int(best.get("version", 0)):
            best = release
    return best, problems


def _pod_problem(pod: dict[str, Any]) -> str | None:
    status = pod.get("status", {})
    phase = status.get("phase")
    if phase == "Succeeded":
        return None
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            return f"{_name(pod)} {waiting.get('reason', 'Waiting')}"
    return None if phase == "Running" else f"{_name(pod)} {phase}"


def _image_tag_version(pods: list[dict[str, Any]]) -> tuple[int, ...] | None:
    """The operator's own image tag (nvcr.io/nvidia/gpu-operator:v24.3.0) when no Helm record says."""
    for pod in pods:
        for container in pod.get("spec", {}).get("containers") or []:
            image = str(container.get("image", ""))
            if "/gpu-operator:" in image:
                return parse_version(image.rsplit(":", 1)[1])
    return None


def gpu_operator_version(snapshot: ClusterSnapshot) -> tuple[int, ...] | None:
    release, _ = _operator_release(snapshot)
    if release is not None:
        chart = release["chart"]["metadata"]
        return parse_version(str(chart.get("version") or chart.get("appVersion") or ""))
    return _image_tag_version(snapshot.operator_pods)


def check_gpu_operator(
    snapshot: ClusterSnapshot, needs: DeploymentNeeds, release_needs: ReleaseNeeds
) -> CheckResult:
    ns = snapshot.operator_namespace
    required = (
        f"GPU operator >= {release_needs.gpu_operator_min} ({release_needs.gpu_operator_recommended}+ recommended) "
        f"running in namespace {ns}"
    )
    release, problems = _operator_release(snapshot)
    pods = snapshot.operator_pods
    if not needs.gpu_enabled:
        return CheckResult("gpu-operator", Status.PASS, "gpu.enabled=false: not needed", required)
    if release is None and not pods:
        seen = f"no Helm release of {GPU_OPERATOR_CHART} and no pods in namespace {ns}"
        if problems:
            seen += f" (undecodable release records: {'; '.join(problems)})"
        return CheckResult("gpu-operator", Status.FAIL, seen, required, GPU_OPERATOR_INSTALL)
    version = gpu_operator_version(snapshot)
    source = (
        f"Helm release {release['name']} revision {release.get('version')}"
        if release
        else "operator image tag"
    )
    unhealthy = [p for p in (_pod_problem(pod) for pod in pods) if p]
    seen = f"{source}: {'v' + format_version(version) if version else 'version unknown'}; {len(pods)} pod(s)"
    if unhealthy:
        seen += f", unhealthy: {', '.join(unhealthy)}"
    fix = (
        "helm upgrade gpu-operator nvidia/gpu-operator -n "
        + ns
        + f" --version {release_needs.gpu_operator_recommended}.0"
    )
    if version is None:
        return CheckResult("gpu-operator", Status.WARN, seen, required, f"helm list -n {ns}")
    if not version_at_least(version, release_needs.gpu_operator_min):
        return CheckResult("gpu-operator", Status.FAIL, seen, required, fix)
    if unhealthy:
        return CheckResult(
            "gpu-operator",
            Status.WARN,
            seen,
            required,
            f"kubectl get pods -n {ns}; kubectl logs -n {ns} <pod>",
        )
    recommended = version_at_least(version, release_needs.gpu_operator_recommended)
    return CheckResult("gpu-operator", Status.PASS if recommended else Status.WARN, seen, required, fix)
