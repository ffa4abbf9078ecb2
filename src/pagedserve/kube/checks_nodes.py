"""Checks on the API server and the GPU nodes: Kubernetes version, GPUs, container runtime, CUDA, disk."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.cluster import ClusterSnapshot
from pagedserve.kube.compat import ReleaseNeeds
from pagedserve.kube.report import CheckResult, Status
from pagedserve.kube.versions import format_version, parse_version, version_at_least

GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GB = 10**9
EPHEMERAL_MIN_GB = 100
EPHEMERAL_RECOMMENDED_GB = 500
GPU_OPERATOR_DOCS = "https://docs.nvidia.com/datacenter/cloud-native/gpu-operator/latest/getting-started.html"


def _labels(node: dict[str, Any]) -> dict[str, str]:
    return node.get("metadata", {}).get("labels") or {}


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def parse_quantity(text: str) -> Decimal:
    from kubernetes.utils import parse_quantity as kube_parse_quantity

    return Decimal(kube_parse_quantity(text))


def gpu_nodes(snapshot: ClusterSnapshot) -> list[dict[str, Any]]:
    """Nodes labelled nvidia.com/gpu.present=true (the chart's nodeSelector in GPU mode)."""
    return [n for n in snapshot.nodes if _labels(n).get(GPU_PRESENT_LABEL) == "true"]


def _allocatable_gpus(node: dict[str, Any]) -> int:
    value = (node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, "0")
    return int(parse_quantity(str(value)))


def _schedulable(node: dict[str, Any]) -> bool:
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions") or []
    )
    return ready and not node.get("spec", {}).get("unschedulable", False)


def check_kubernetes_version(snapshot: ClusterSnapshot, release: ReleaseNeeds) -> CheckResult:
    git_version = str(snapshot.version.get("gitVersion", ""))
    found = parse_version(git_version)
    required = f">= {release.kubernetes_min} ({release.kubernetes_recommended}+ recommended)"
    fix = "upgrade the control plane: https://kubernetes.io/docs/tasks/administer-cluster/cluster-upgrade/"
    if found is None:
        return CheckResult(
            "kubernetes-version", Status.WARN, f"unparsable version {git_version!r}", required, fix
        )
    if not version_at_least(found, release.kubernetes_min):
        return CheckResult("kubernetes-version", Status.FAIL, f"server {git_version}", required, fix)
    status = Status.PASS if version_at_least(found, release.kubernetes_recommended) else Status.WARN
    return CheckResult("kubernetes-version", status, f"server {git_version}", required, fix)


def check_gpu_nodes(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> CheckResult:
    tp = needs.tensor_parallel_size
    product = needs.gpu_product
    required = f"a node labelled {GPU_PRESENT_LABEL}=true with allocatable {GPU_RESOURCE} >= {tp}"
    if product:
        required += f" and {GPU_PRODUCT_LABEL}={product}"
    if not needs.gpu_enabled:
        return CheckResult("gpu-nodes", Status.PASS, "gpu.enabled=false: CPU mode, no GPUs needed", required)
    labelled = gpu_nodes(snapshot)
    unlabelled = [n for n in snapshot.nodes if n not in labelled and _allocatable_gpus(n) > 0]
    if not labelled:
        seen = f"no node labelled {GPU_PRESENT_LABEL}=true among {len(snapshot.nodes)} node(s)"
        if unlabelled:
            seen += f"; {len(unlabelled)} node(s) advertise {GPU_RESOURCE} without the label (no GPU feature discovery)"
        return CheckResult(
            "gpu-nodes", Status.FAIL, seen, required, f"install the NVIDIA GPU operator: {GPU_OPERATOR_DOCS}"
        )
    candidates = [n for n in labelled if not product or _labels(n).get(GPU_PRODUCT_LABEL) == product]
    if not candidates:
        products = sorted({_labels(n).get(GPU_PRODUCT_LABEL, "?") for n in labelled})
        return CheckResult(
            "gpu-nodes",
            Status.FAIL,
            f"{len(labelled)} GPU node(s), none with {GPU_PRODUCT_LABEL}={product} (found {', '.join(products)})",
            required,
            "set gpu.product to one of the products found, or add nodes of that product",
        )
    counts = {_name(n): _allocatable_gpus(n) for n in candidates}
    summary = ", ".join(f"{name}: {count}" for name, count in counts.items())
    if max(counts.values()) == 0:
        return CheckResult(
            "gpu-nodes",
            Status.FAIL,
            f"{len(candidates)} GPU node(s) but none has allocatable {GPU_RESOURCE} ({summary})",
            required,
            f"the device plugin is not advertising GPUs: kubectl get pods -n {snapshot.operator_namespace}; "
            "check the nvidia-device-plugin-daemonset logs",
        )
    big_enough = [n for n in candidates if _allocatable_gpus(n) >= tp]
    if not big_enough:
        return CheckResult(
            "gpu-nodes",
            Status.FAIL,
            f"most allocatable {GPU_RESOURCE} on one node is {max(counts.values())} ({summary}); tensor-parallel {tp}",
            required,
            "lower engine.tensorParallelSize (pagedserve plan shows valid sizes) or add larger GPU nodes",
        )
    usable = [n for n in big_enough if _schedulable(n)]
    if not usable:
        return CheckResult(
            "gpu-nodes",
            Status.FAIL,
            f"GPU nodes with >= {tp} GPUs are NotReady or cordoned ({summary})",
            required,
            "kubectl describe node <name>; kubectl uncordon <name>",
        )
    return CheckResult("gpu-nodes", Status.PASS, f"allocatable {GPU_RESOURCE}: {summary}", required)


def check_container_runtime(snapshot: ClusterSnapshot, release: ReleaseNeeds) -> CheckResult:
    nodes = gpu_nodes(snapshot) or snapshot.nodes
    required = f"containerd >= {release.containerd_min} on GPU nodes"
    fix = "upgrade containerd on the node image (managed clusters: upgrade the node pool)"
    runtimes = {
        _name(n): str(n.get("status", {}).get("nodeInfo", {}).get("containerRuntimeVersion", ""))
        for n in nodes
    }
    if not runtimes:
        return CheckResult("container-runtime", Status.FAIL, "no nodes", required, fix)
    old, other = [], []
    for name, runtime in runtimes.items():
        found = parse_version(runtime)
        if runtime.startswith("containerd://") and found is not None:
            if not version_at_least(found, release.containerd_min):
                old.append(f"{name}: {runtime}")
        else:
            other.append(f"{name}: {runtime or 'unknown'}")
    seen = ", ".join(f"{name}: {runtime}" for name, runtime in runtimes.items())
    if old:
        return CheckResult(
            "container-runtime", Status.FAIL, "old containerd on " + ", ".join(old), required, fix
        )
    if other:
        return CheckResult(
            "container-runtime",
            Status.WARN,
            "not containerd: " + ", ".join(other),
            required,
            "the GPU operator supports CRI-O too, but pagedserve is tested on containerd",
        )
    return CheckResult("container-runtime", Status.PASS, seen, required)


def node_cuda_version(node: dict[str, Any]) -> tuple[int, ...] | None:
    """Highest CUDA version the node's driver supports, from GPU feature discovery labels (new and old names)."""
    labels = _labels(node)
    full = labels.get("nvidia.com/cuda.runtime-version.full")
    if full:
        return parse_version(full)
    for prefix in ("nvidia.com/cuda.runtime-version", "nvidia.com/cuda.runtime"):
        major, minor = labels.get(f"{prefix}.major"), labels.get(f"{prefix}.minor")
        if major and minor:
            return parse_version(f"{major}.{minor}")
    return None


def node_driver_version(node: dict[str, Any]) -> str:
    labels = _labels(node)
    full = labels.get("nvidia.com/cuda.driver-version.full")
    if full:
        return full
    parts = [labels.get(f"nvidia.com/cuda.driver.{part}") for part in ("major", "minor", "rev")]
    return ".".join(p for p in parts if p) or "?"


def check_cuda_driver(snapshot: ClusterSnapshot, release: ReleaseNeeds) -> CheckResult:
    required = f"CUDA >= {release.cuda_min} ({release.cuda_recommended}+ recommended) on every GPU node"
    fix = "upgrade the NVIDIA driver (GPU operator: set driver.version in its values, then helm upgrade)"
    nodes = gpu_nodes(snapshot)
    if not nodes:
        return CheckResult("cuda-driver", Status.WARN, "no GPU nodes to read CUDA labels from", required, fix)
    found = {_name(n): node_cuda_version(n) for n in nodes}
    unknown = [name for name, v in found.items() if v is None]
    known = {name: v for name, v in found.items() if v is not None}
    if not known:
        return CheckResult(
            "cuda-driver",
            Status.WARN,
            "GPU nodes carry no nvidia.com/cuda.runtime-version labels (GPU feature discovery not running)",
            required,
            "run `pagedserve preflight --local` on a GPU node, or enable gpu-feature-discovery in the GPU operator",
        )
    seen = ", ".join(
        f"{_name(n)}: CUDA {format_version(known[_name(n)])} (driver {node_driver_version(n)})"
        for n in nodes
        if _name(n) in known
    )
    if unknown:
        seen += f"; no labels on {', '.join(unknown)}"
    lowest = min(known.values())
    if not version_at_least(lowest, release.cuda_min):
        return CheckResult("cuda-driver", Status.FAIL, seen, required, fix)
    status = (
        Status.PASS if version_at_least(lowest, release.cuda_recommended) and not unknown else Status.WARN
    )
    return CheckResult("cuda-driver", status, seen, required, fix)


def check_ephemeral_storage(snapshot: ClusterSnapshot) -> CheckResult:
    required = f">= {EPHEMERAL_MIN_GB} GB allocatable ephemeral-storage per GPU node ({EPHEMERAL_RECOMMENDED_GB} GB+ NVMe recommended)"
    fix = "grow the node root/kubelet disk (managed clusters: larger boot disk on the GPU node pool)"
    nodes = gpu_nodes(snapshot)
    if not nodes:
        return CheckResult("ephemeral-storage", Status.WARN, "no GPU nodes", required, fix)
    sizes = {}
    for node in nodes:
        value = (node.get("status", {}).get("allocatable") or {}).get("ephemeral-storage")
        sizes[_name(node)] = parse_quantity(str(value)) if value is not None else Decimal(0)
    seen = ", ".join(f"{name}: {size / GB:.0f} GB" for name, size in sizes.items())
    smallest = min(sizes.values())
    if smallest < EPHEMERAL_MIN_GB * GB:
        return CheckResult("ephemeral-storage", Status.FAIL, seen, required, fix)
    status = Status.PASS if smallest >= EPHEMERAL_RECOMMENDED_GB * GB else Status.WARN
    return CheckResult("ephemeral-storage", status, seen, required, fix)
