"""Checks on cluster add-ons: storage, metrics adapter, monitoring and Gateway API CRDs, ingress, runtime class,
namespace."""

from __future__ import annotations

from typing import Any

from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.cluster import (
    CUSTOM_METRICS_APISERVICE,
    HTTPROUTE_CRD,
    INFERENCE_OBJECTIVE_CRDS,
    INFERENCE_POOL_CRD,
    KEDA_CRD,
    LWS_CRD,
    MONITORING_CRDS,
    ClusterSnapshot,
)
from pagedserve.kube.report import CheckResult, Status

DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
DEFAULT_INGRESS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
NGINX_CONTROLLER = "k8s.io/ingress-nginx"
# Provisioners whose volumes can be mounted read-write by pods on several nodes at once.
RWX_PROVISIONERS = (
    "efs.csi.aws.com",
    "file.csi.azure.com",
    "kubernetes.io/azure-file",
    "filestore.csi.storage.gke.io",
    "nfs.csi.k8s.io",
    "cephfs.csi.ceph.com",
    "driver.longhorn.io",
    "nfs-subdir-external-provisioner",
    "lustre.csi.aws.com",
    "fsx.csi.aws.com",
)
SHARED_ACCESS_MODES = ("ReadWriteMany", "ReadOnlyMany")


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def _is_default(obj: dict[str, Any], annotations: tuple[str, ...]) -> bool:
    found = obj.get("metadata", {}).get("annotations") or {}
    return any(found.get(a) == "true" for a in annotations)


def _supports_rwx(storage_class: dict[str, Any]) -> bool:
    provisioner = str(storage_class.get("provisioner", ""))
    return any(provisioner == p or provisioner.endswith(p) for p in RWX_PROVISIONERS)


def check_storage(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> CheckResult:
    """A default StorageClass for the model claim; a shared (RWX/ROX) volume when several pods mount it."""
    classes = snapshot.storage_classes
    defaults = [c for c in classes if _is_default(c, DEFAULT_CLASS_ANNOTATIONS)]
    shared = needs.replicas > 1
    listing = ", ".join(
        f"{_name(c)} ({c.get('provisioner')}{', default' if c in defaults else ''})" for c in classes
    )
    listing = listing or "no StorageClasses"
    if needs.model_on_existing_claim:
        claim = snapshot.model_claim
        required = f"PersistentVolumeClaim {needs.existing_claim} Bound" + (
            f", access mode {' or '.join(SHARED_ACCESS_MODES)} for {needs.replicas} replicas"
            if shared
            else ""
        )
        if claim is None:
            return CheckResult(
                "model-storage",
                Status.FAIL,
                f"claim {needs.existing_claim} not found",
                required,
                "create and fill the claim first, or set model.source=hub",
            )
        modes = claim.get("spec", {}).get("accessModes") or []
        phase = claim.get("status", {}).get("phase", "?")
        seen = f"claim {needs.existing_claim}: {phase}, {', '.join(modes)}"
        if shared and not set(modes) & set(SHARED_ACCESS_MODES):
            return CheckResult(
                "model-storage",
                Status.FAIL,
                seen,
                required,
                "replicas on several nodes cannot mount a ReadWriteOnce claim: use an RWX claim or replicaCount 1",
            )
        status = Status.PASS if phase == "Bound" else Status.WARN
        return CheckResult(
            "model-storage", status, seen, required, "kubectl describe pvc " + needs.existing_claim
        )
    wanted = needs.model_pvc_storage_class
    required = "a default StorageClass" if not wanted else f"StorageClass {wanted}"
    if needs.model_source == "hub" and shared:
        required += " with ReadWriteMany volumes (model.pvc.accessModes) shared by the replicas"
    fix = "https://kubernetes.io/docs/tasks/administer-cluster/change-default-storage-class/"
    target = (
        next((c for c in classes if _name(c) == wanted), None)
        if wanted
        else (defaults[0] if defaults else None)
    )
    if target is None:
        status = Status.FAIL if needs.model_source == "hub" else Status.WARN
        return CheckResult(
            "model-storage",
            status,
            f"{'no default StorageClass' if not wanted else wanted + ' missing'}: {listing}",
            required,
            fix,
        )
    if needs.model_source == "hub" and shared:
        modes = set(needs.model_pvc_access_modes)
        if not modes & set(SHARED_ACCESS_MODES):
            return CheckResult(
                "model-storage",
                Status.FAIL,
                f"model.pvc.accessModes {sorted(modes)} for {needs.replicas} replicas",
                required,
                "set model.pvc.accessModes: [ReadWriteMany] on an RWX-capable class",
            )
        if not _supports_rwx(target):
            return CheckResult(
                "model-storage",
                Status.WARN,
                f"{_name(target)} ({target.get('provisioner')}) may not offer ReadWriteMany",
                required,
                "use an NFS/EFS/Filestore/Azure Files/CephFS class for model.pvc.storageClassName",
            )
    if len(defaults) > 1 and not wanted:
        return CheckResult(
            "model-storage", Status.WARN, f"several default StorageClasses: {listing}", required, fix
        )
    return CheckResult("model-storage", Status.PASS, listing, required)


def _optional_feature(
    name: str, enabled: bool | None, present: bool, seen: str, required: str, fix: str
) -> CheckResult:
    """Present: PASS. Missing: FAIL when the values enable the feature, WARN when no values say, PASS when off."""
    if present:
        return CheckResult(name, Status.PASS, seen, required)
    if enabled is None:
        return CheckResult(name, Status.WARN, seen + " (needed only if you enable it)", required, fix)
    if enabled:
        return CheckResult(name, Status.FAIL, seen, required, fix)
    return CheckResult(name, Status.PASS, seen + "; not needed by these values", required)


def check_custom_metrics(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> CheckResult:
    required = (
        f"APIService {CUSTOM_METRICS_APISERVICE} Available (Prometheus Adapter) when autoscaling.enabled"
    )
    fix = "helm install prometheus-adapter prometheus-community/prometheus-adapter -f deploy/prometheus-adapter/values.yaml"
    service = snapshot.apiservice
    if service is None:
        return _optional_feature(
            "custom-metrics-api", needs.autoscaling, False, "APIService not registered", required, fix
        )
    conditions = service.get("status", {}).get("conditions") or []
    available = next((c for c in conditions if c.get("type") == "Available"), {})
    backend = service.get("spec", {}).get("service") or {}
    seen = f"served by {backend.get('namespace', '?')}/{backend.get('name', '?')}: Available={available.get('status', '?')}"
    if available.get("status") != "True":
        seen += f" ({available.get('reason', '')}: {available.get('message', '')})"
        return _optional_feature(
            "custom-metrics-api",
            needs.autoscaling,
            False,
            seen,
            required,
            f"kubectl get apiservice {CUSTOM_METRICS_APISERVICE} -o yaml; check the adapter pod",
        )
    return CheckResult("custom-metrics-api", Status.PASS, seen, required)


def _crd_established(crd: dict[str, Any] | None) -> bool:
    if crd is None:
        return False
    conditions = crd.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def check_monitoring_crds(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> list[CheckResult]:
    fix = "install the Prometheus Operator CRDs (kube-prometheus-stack or prometheus-operator-crds chart)"
    results = []
    for crd, enabled in zip(MONITORING_CRDS, (needs.service_monitor, needs.prometheus_rule)):
        kind = crd[0].split(".", 1)[0]
        results.append(_crd_serving(snapshot, f"crd-{kind}", crd, enabled, f"the chart creates {kind}", fix))
    if needs.keda:
        fix = "helm install keda kedacore/keda -n keda --create-namespace"
        results.append(_crd_serving(snapshot, "crd-keda", KEDA_CRD, True, "keda.enabled", fix))
    if needs.multi_node:
        fix = (
            "install the LeaderWorkerSet controller (kubernetes-sigs/lws release manifests or its Helm chart)"
        )
        results.append(_crd_serving(snapshot, "crd-leaderworkerset", LWS_CRD, True, "multiNode.enabled", fix))
    return results


def _served_versions(crd: dict[str, Any] | None) -> list[str]:
    versions = (crd or {}).get("spec", {}).get("versions") or []
    return [str(v.get("name")) for v in versions if v.get("served")]


def _crd_serving(
    snapshot: ClusterSnapshot, name: str, crd: tuple[str, str], enabled: bool | None, needed_by: str, fix: str
) -> CheckResult:
    """The CRD is established and serves the version the chart renders; missing FAILs when `enabled`."""
    crd_name, version = crd
    found = snapshot.crds.get(crd_name)
    served = _served_versions(found)
    required = f"CRD {crd_name} serving {version} when {needed_by}"
    if not _crd_established(found):
        return _optional_feature(name, enabled, False, f"CRD {crd_name} not installed", required, fix)
    if version not in served:
        seen = f"CRD {crd_name} serves {', '.join(served) or 'no version'}, not {version}"
        return _optional_feature(name, enabled, False, seen, required, fix)
    return CheckResult(name, Status.PASS, f"CRD {crd_name} established, serves {version}", required)


def check_gateway_crds(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> list[CheckResult]:
    """Gateway API HTTPRoute, InferencePool and InferenceObjective CRDs, when the values render those objects."""
    gateway_fix = (
        "install the Gateway API standard CRDs (kubectl apply -f "
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml) "
        "and a Gateway implementation; or leave gateway.httpRoute.parentRefs empty"
    )
    pool_fix = (
        "install the Inference Extension CRDs (kubectl apply -f https://github.com/kubernetes-sigs/"
        "gateway-api-inference-extension/releases/download/v1.6.0/v1-manifests.yaml); "
        "or inferenceExtension.enabled=false"
    )
    results = [
        _crd_serving(snapshot, "crd-httproutes", HTTPROUTE_CRD, needs.http_route, "the chart renders an HTTPRoute",
                     gateway_fix),
        _crd_serving(snapshot, "crd-inferencepools", INFERENCE_POOL_CRD, needs.inference_pool,
                     "inferenceExtension.enabled", pool_fix),
    ]  # fmt: skip
    version = needs.objective_api_version
    if version:
        crd = INFERENCE_OBJECTIVE_CRDS.get(version)
        fix = (
            "kubectl apply -f https://github.com/llm-d/llm-d-router/releases/download/v0.10.0/manifests.yaml"
            if version.startswith("llm-d.ai/")
            else "install the Inference Extension v1.5 CRDs"
        ) + ", or set inferenceExtension.objectiveApiVersion to the InferenceObjective CRD the cluster has"
        if crd is None:
            known = ", ".join(INFERENCE_OBJECTIVE_CRDS)
            results.append(
                CheckResult("crd-inferenceobjectives", Status.FAIL, f"objectiveApiVersion {version}",
                            f"inferenceExtension.objectiveApiVersion one of {known}", "use one of these")
            )  # fmt: skip
        else:
            needed_by = "inferenceExtension.objectives are set"
            results.append(_crd_serving(snapshot, "crd-inferenceobjectives", crd, True, needed_by, fix))
    return results


def check_ingress_class(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> CheckResult:
    classes = snapshot.ingress_classes
    listing = (
        ", ".join(f"{_name(c)} ({c.get('spec', {}).get('controller')})" for c in classes)
        or "no IngressClasses"
    )
    wanted = needs.ingress_class_name
    required = (
        f"IngressClass {wanted or '(cluster default)'} served by {NGINX_CONTROLLER} when ingress.enabled"
    )
    fix = "helm install ingress-nginx ingress-nginx/ingress-nginx -n ingress-nginx --create-namespace"
    if wanted:
        target = next((c for c in classes if _name(c) == wanted), None)
    else:
        target = next((c for c in classes if _is_default(c, (DEFAULT_INGRESS_ANNOTATION,))), None)
    if target is None:
        return _optional_feature("ingress-class", needs.ingress_enabled, False, listing, required, fix)
    controller = target.get("spec", {}).get("controller")
    if controller != NGINX_CONTROLLER:
        return CheckResult(
            "ingress-class",
            Status.WARN,
            f"{_name(target)} is served by {controller}",
            required,
            "the chart's streaming annotations are NGINX ones: port proxy-buffering off and the timeouts",
        )
    return CheckResult("ingress-class", Status.PASS, listing, required)


def check_runtime_class(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> CheckResult:
    name = needs.runtime_class_name
    if not name:
        return CheckResult(
            "runtime-class", Status.PASS, "no runtimeClassName requested", "RuntimeClass when set in values"
        )
    required = f"RuntimeClass {name}"
    if snapshot.runtime_class is None:
        return CheckResult(
            "runtime-class",
            Status.FAIL,
            f"RuntimeClass {name} not found",
            required,
            "the GPU operator creates RuntimeClass nvidia (operator.runtimeClass); or clear gpu.runtimeClassName",
        )
    handler = snapshot.runtime_class.get("handler", "?")
    return CheckResult("runtime-class", Status.PASS, f"RuntimeClass {name} (handler {handler})", required)


def check_namespace(snapshot: ClusterSnapshot, namespace: str) -> CheckResult:
    required = f"namespace {namespace} (or helm install --create-namespace)"
    if snapshot.namespace is None:
        return CheckResult(
            "namespace",
            Status.WARN,
            f"namespace {namespace} does not exist",
            required,
            f"kubectl create namespace {namespace}, or pass --create-namespace to helm install",
        )
    phase = snapshot.namespace.get("status", {}).get("phase", "Active")
    status = Status.PASS if phase == "Active" else Status.FAIL
    return CheckResult(
        "namespace",
        status,
        f"namespace {namespace} {phase}",
        required,
        "wait for the namespace to finish terminating",
    )
