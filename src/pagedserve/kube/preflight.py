"""Run the cluster checks in order on one snapshot of the cluster."""

from __future__ import annotations

from pagedserve.kube import checks_addons, checks_engine, checks_gpu_operator, checks_nodes
from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.cluster import ClusterAccessError, ClusterSnapshot, read_cluster
from pagedserve.kube.compat import ReleaseNeeds, StackVersions, check_version_matrix, release_needs
from pagedserve.kube.report import CheckResult
from pagedserve.kube.versions import parse_version

HOPPER_PRODUCTS = ("H100", "H200", "H800", "GH200")
BLACKWELL_PRODUCTS = ("B100", "B200", "GB200")


def gpu_families(snapshot: ClusterSnapshot) -> frozenset[str]:
    """GPU architecture families of the GPU nodes (label nvidia.com/gpu.family, else from the product name)."""
    families = set()
    for node in checks_nodes.gpu_nodes(snapshot):
        labels = node.get("metadata", {}).get("labels") or {}
        family = labels.get("nvidia.com/gpu.family")
        product = labels.get(checks_nodes.GPU_PRODUCT_LABEL, "").upper()
        if family:
            families.add(family.lower())
        elif any(p in product for p in HOPPER_PRODUCTS):
            families.add("hopper")
        elif any(p in product for p in BLACKWELL_PRODUCTS):
            families.add("blackwell")
    return frozenset(families)


def stack_versions(snapshot: ClusterSnapshot, needs: DeploymentNeeds) -> StackVersions:
    cuda = [v for v in map(checks_nodes.node_cuda_version, checks_nodes.gpu_nodes(snapshot)) if v is not None]
    return StackVersions(
        cuda=min(cuda) if cuda else None,
        kubernetes=parse_version(str(snapshot.version.get("gitVersion", ""))),
        gpu_operator=checks_gpu_operator.gpu_operator_version(snapshot),
        gpu_families=gpu_families(snapshot),
        quantization=(needs.quantization or "none") if needs.known else None,
    )


def run_checks(
    snapshot: ClusterSnapshot, needs: DeploymentNeeds, namespace: str, release: ReleaseNeeds
) -> list[CheckResult]:
    results = [
        checks_engine.check_engine_values(needs),
        checks_nodes.check_kubernetes_version(snapshot, release),
        checks_nodes.check_gpu_nodes(snapshot, needs),
        checks_gpu_operator.check_gpu_operator(snapshot, needs, release),
        checks_nodes.check_container_runtime(snapshot, release),
    ]
    if needs.gpu_enabled:
        results += [
            checks_nodes.check_cuda_driver(snapshot, release),
            checks_nodes.check_ephemeral_storage(snapshot),
        ]
        results.append(check_version_matrix(release.matches_vllm, stack_versions(snapshot, needs)))
    results += [
        checks_addons.check_namespace(snapshot, namespace),
        checks_addons.check_storage(snapshot, needs),
        checks_addons.check_custom_metrics(snapshot, needs),
        *checks_addons.check_monitoring_crds(snapshot, needs),
        *checks_addons.check_gateway_crds(snapshot, needs),
        checks_addons.check_ingress_class(snapshot, needs),
        checks_addons.check_runtime_class(snapshot, needs),
    ]
    return results


def run_cluster_preflight(
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    operator_namespace: str,
    needs: DeploymentNeeds,
    timeout_s: float = 10.0,
) -> tuple[ClusterSnapshot, list[CheckResult]]:
    """Read the cluster and run every check. Raises ClusterAccessError when the cluster cannot be read fully."""
    snapshot = read_cluster(kubeconfig, context, namespace, operator_namespace, needs, timeout_s)
    if snapshot.forbidden:
        lines = "\n  ".join(snapshot.forbidden)
        raise ClusterAccessError(
            f"the credentials may not read everything preflight checks (403 Forbidden):\n  {lines}\n"
            "grant get/list on these (a read-only ClusterRole such as `view` plus nodes, storageclasses, "
            "ingressclasses, runtimeclasses, apiservices, customresourcedefinitions, and secrets in the GPU "
            "operator namespace), or run with a kubeconfig that can"
        )
    return snapshot, run_checks(snapshot, needs, namespace, release_needs())
