"""What a values file for deploy/helm/pagedserve asks of the cluster, so preflight knows what to check.

Keys the file leaves out take the chart's defaults, as `helm install -f` would. Without a values file the
optional features (ingress, monitoring, autoscaling) are unknown: preflight then warns rather than fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DeploymentNeeds:
    source: str | None = None
    """The values file these came from; None: chart defaults, optional features unknown."""
    replicas: int = 1
    """Most pods at once (replicaCount, or the autoscaler's maxReplicas)."""
    tensor_parallel_size: int = 1
    quantization: str = ""
    gpu_enabled: bool = True
    gpu_product: str = ""
    runtime_class_name: str = ""
    model_source: str = "bundled"
    existing_claim: str = ""
    model_pvc_access_modes: list[str] = field(default_factory=lambda: ["ReadWriteOnce"])
    model_pvc_storage_class: str = ""
    ingress_enabled: bool | None = None
    ingress_class_name: str = "nginx"
    service_monitor: bool | None = None
    prometheus_rule: bool | None = None
    autoscaling: bool | None = None
    keda: bool | None = None
    multi_node: bool = False
    """multiNode.enabled: each replica is a LeaderWorkerSet group (needs the LWS controller)."""
    http_route: bool | None = None
    """The chart renders an HTTPRoute: gateway.httpRoute.enabled with parentRefs (needs the Gateway API CRDs)."""
    inference_pool: bool | None = None
    """inferenceExtension.enabled: an InferencePool and its endpoint picker (needs the InferencePool CRD)."""
    objective_api_version: str = ""
    """API version of the InferenceObjectives the chart renders; "" when it renders none."""

    @property
    def model_on_existing_claim(self) -> bool:
        """model.source pvc (a folder) or hfcache (a Hub cache) on a claim the user made and filled."""
        return self.model_source in ("pvc", "hfcache") and bool(self.existing_claim)

    @property
    def known(self) -> bool:
        return self.source is not None


def _get(values: dict[str, Any], dotted: str, default: Any) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return default if node is None else node


def _typed(values: dict[str, Any], dotted: str, default: Any, kind: type | tuple[type, ...]) -> Any:
    value = _get(values, dotted, default)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"values: {dotted} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _first(values: dict[str, Any], keys: tuple[str, ...], default: Any, kind: type) -> Any:
    """The first of `keys` the file sets (the chart nests some keys; older drafts had them top level)."""
    for key in keys:
        if _get(values, key, None) is not None:
            return _typed(values, key, default, kind)
    return default


def needs_from_values(values: dict[str, Any], source: str) -> DeploymentNeeds:
    if not isinstance(values, dict):
        raise ValueError(f"{source}: a values file must be a YAML mapping")
    replicas = _typed(values, "replicaCount", 1, int)
    autoscaling = _typed(values, "autoscaling.enabled", False, bool)
    keda = _typed(values, "keda.enabled", False, bool)
    if autoscaling:
        replicas = max(replicas, _typed(values, "autoscaling.maxReplicas", 4, int))
    if keda:
        replicas = max(replicas, _typed(values, "keda.maxReplicas", 4, int))
    tp = _typed(values, "engine.tensorParallelSize", 1, int)
    if tp < 1 or replicas < 0:
        raise ValueError(f"{source}: engine.tensorParallelSize must be >= 1 and replicaCount >= 0")
    access_modes = _typed(values, "model.pvc.accessModes", ["ReadWriteOnce"], list)
    inference_pool = _typed(values, "inferenceExtension.enabled", False, bool)
    return DeploymentNeeds(
        source=source,
        replicas=replicas,
        tensor_parallel_size=tp,
        quantization=str(_get(values, "engine.quantization", "") or ""),
        gpu_enabled=_typed(values, "gpu.enabled", True, bool),
        gpu_product=_typed(values, "gpu.product", "", str),
        runtime_class_name=_first(values, ("gpu.runtimeClassName", "runtimeClassName"), "", str),
        model_source=_typed(values, "model.source", "bundled", str),
        existing_claim=_typed(values, "model.existingClaim", "", str),
        model_pvc_access_modes=[str(mode) for mode in access_modes],
        model_pvc_storage_class=_typed(values, "model.pvc.storageClassName", "", str),
        ingress_enabled=_typed(values, "ingress.enabled", False, bool),
        ingress_class_name=_typed(values, "ingress.className", "nginx", str),
        service_monitor=_first(
            values, ("monitoring.serviceMonitor.enabled", "serviceMonitor.enabled"), False, bool
        ),
        prometheus_rule=_first(
            values, ("monitoring.prometheusRule.enabled", "prometheusRule.enabled"), False, bool
        ),
        autoscaling=autoscaling,
        keda=keda,
        multi_node=_typed(values, "multiNode.enabled", False, bool),
        http_route=_typed(values, "gateway.httpRoute.enabled", True, bool)
        and bool(_typed(values, "gateway.httpRoute.parentRefs", [], list)),
        inference_pool=inference_pool,
        objective_api_version=_typed(
            values, "inferenceExtension.objectiveApiVersion", "llm-d.ai/v1alpha2", str
        )
        if inference_pool and _typed(values, "inferenceExtension.objectives", [], list)
        else "",
    )


def load_needs(path: str | None) -> DeploymentNeeds:
    """Read a chart values file (None: chart defaults with the optional features unknown)."""
    if path is None:
        return DeploymentNeeds()
    file = Path(path).expanduser()
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"cannot read values file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"values file {file} is not valid YAML: {exc}") from None
    return needs_from_values(values, str(file))
