"""Read what preflight needs from the cluster, through the official `kubernetes` client, into plain API JSON.

Every read is a GET; a read that cannot be made (unreachable server, bad kubeconfig, rejected credentials,
403) raises ClusterAccessError, which the CLI turns into exit code 2 with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pagedserve.kube.chart_values import DeploymentNeeds

CUSTOM_METRICS_APISERVICE = "v1beta1.custom.metrics.k8s.io"
# The CRDs of the custom kinds the chart renders, each with the API version it renders (a CRD that does not serve
# it fails the install as "no matches for kind").
MONITORING_CRDS = (
    ("servicemonitors.monitoring.coreos.com", "v1"),
    ("prometheusrules.monitoring.coreos.com", "v1"),
)
KEDA_CRD = ("scaledobjects.keda.sh", "v1alpha1")
LWS_CRD = ("leaderworkersets.leaderworkerset.x-k8s.io", "v1")
HTTPROUTE_CRD = ("httproutes.gateway.networking.k8s.io", "v1")
INFERENCE_POOL_CRD = ("inferencepools.inference.networking.k8s.io", "v1")
INFERENCE_OBJECTIVE_CRDS = {
    "llm-d.ai/v1alpha2": ("inferenceobjectives.llm-d.ai", "v1alpha2"),
    "inference.networking.x-k8s.io/v1alpha2": (
        "inferenceobjectives.inference.networking.x-k8s.io",
        "v1alpha2",
    ),
}
GATEWAY_CRDS = (
    HTTPROUTE_CRD[0],
    INFERENCE_POOL_CRD[0],
    *(crd for crd, _ in INFERENCE_OBJECTIVE_CRDS.values()),
)
HELM_RELEASE_SELECTOR = "owner=helm"


class ClusterAccessError(Exception):
    """Preflight cannot read the cluster; the message says why and what to do."""


@dataclass
class ClusterSnapshot:
    """The API objects the checks look at, as the API server returned them (None: 404 Not Found)."""

    server: str
    version: dict[str, Any]
    nodes: list[dict[str, Any]]
    namespace: dict[str, Any] | None
    operator_namespace: str
    operator_pods: list[dict[str, Any]]
    helm_release_secrets: list[dict[str, Any]]
    storage_classes: list[dict[str, Any]]
    model_claim: dict[str, Any] | None
    apiservice: dict[str, Any] | None
    crds: dict[str, dict[str, Any] | None]
    ingress_classes: list[dict[str, Any]]
    runtime_class: dict[str, Any] | None
    forbidden: list[str] = field(default_factory=list)


def load_api_client(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient for the kubeconfig (default: $KUBECONFIG or ~/.kube/config, else in-cluster credentials)."""
    import os

    from kubernetes import client, config

    configuration = client.Configuration()
    where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    if kubeconfig is not None and not os.path.isfile(os.path.expanduser(kubeconfig)):
        raise ClusterAccessError(f"kubeconfig {kubeconfig} does not exist")
    try:
        try:
            config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except config.ConfigException:
            if kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ:
                config.load_incluster_config(client_configuration=configuration)
                where = "in-cluster service account"
            else:
                raise
    except Exception as exc:  # the loader raises many types on malformed files; all mean "bad kubeconfig"
        raise ClusterAccessError(f"cannot load kubeconfig {where}: {type(exc).__name__}: {exc}") from None
    configuration.retries = 0  # one attempt: an unreachable server should fail fast with its reason
    return client.ApiClient(configuration)


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body is None and getattr(exc, "data", None) is None:
        http_resp = getattr(exc, "http_resp", None)
        body = getattr(http_resp, "data", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        return str(json.loads(body).get("message") or body)
    except (TypeError, ValueError, AttributeError):
        return str(body or exc.reason or "")


class ClusterReader:
    def __init__(self, api_client: Any, timeout_s: float) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.server = api_client.configuration.host
        self.timeout = (timeout_s, timeout_s)
        self.core = client.CoreV1Api(api_client)
        self.version_api = client.VersionApi(api_client)
        self.apireg = client.ApiregistrationV1Api(api_client)
        self.apiext = client.ApiextensionsV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.node_api = client.NodeV1Api(api_client)
        self.forbidden: list[str] = []

    def _get(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """One GET; parsed JSON, None on 404. 403s are collected so one run lists every missing permission."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            response = call(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            return json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                self.forbidden.append(f"{what}: {_status_message(exc)}")
                return None
            if exc.status == 401:
                raise ClusterAccessError(
                    f"the API server at {self.server} rejected the credentials (401 Unauthorized) reading {what}; "
                    "refresh the kubeconfig's token or client certificate"
                ) from None
            raise ClusterAccessError(
                f"the API server at {self.server} answered {exc.status} {exc.reason} reading {what}: "
                f"{_status_message(exc)}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClusterAccessError(f"cannot reach the API server at {self.server}: {reason}") from None
        except ValueError as exc:
            raise ClusterAccessError(
                f"the API server at {self.server} sent invalid JSON for {what}: {exc}"
            ) from None

    def _items(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        found = self._get(what, call, *args, **kwargs)
        return list((found or {}).get("items") or [])

    def snapshot(self, namespace: str, operator_namespace: str, needs: DeploymentNeeds) -> ClusterSnapshot:
        version = self._get("/version", self.version_api.get_code)
        if version is None:
            raise ClusterAccessError(
                f"{self.server} has no /version endpoint: is it a Kubernetes API server?"
            )
        claim = None
        if needs.model_on_existing_claim:
            claim = self._get(
                f"persistentvolumeclaim {namespace}/{needs.existing_claim}",
                self.core.read_namespaced_persistent_volume_claim,
                needs.existing_claim,
                namespace,
            )
        runtime_class = None
        if needs.runtime_class_name:
            runtime_class = self._get(
                f"runtimeclass {needs.runtime_class_name}",
                self.node_api.read_runtime_class,
                needs.runtime_class_name,
            )
        crds = {
            name: self._get(
                f"customresourcedefinition {name}", self.apiext.read_custom_resource_definition, name
            )
            for name in (*(crd for crd, _ in (*MONITORING_CRDS, KEDA_CRD, LWS_CRD)), *GATEWAY_CRDS)
        }
        return ClusterSnapshot(
            server=self.server,
            version=version,
            nodes=self._items("nodes (cluster scope)", self.core.list_node),
            namespace=self._get(f"namespace {namespace}", self.core.read_namespace, namespace),
            operator_namespace=operator_namespace,
            operator_pods=self._items(
                f"pods in namespace {operator_namespace}", self.core.list_namespaced_pod, operator_namespace
            ),
            helm_release_secrets=self._items(
                f"secrets in namespace {operator_namespace} (Helm release records)",
                self.core.list_namespaced_secret,
                operator_namespace,
                label_selector=HELM_RELEASE_SELECTOR,
            ),
            storage_classes=self._items("storageclasses", self.storage.list_storage_class),
            model_claim=claim,
            apiservice=self._get(
                f"apiservice {CUSTOM_METRICS_APISERVICE}",
                self.apireg.read_api_service,
                CUSTOM_METRICS_APISERVICE,
            ),
            crds=crds,
            ingress_classes=self._items("ingressclasses", self.networking.list_ingress_class),
            runtime_class=runtime_class,
            forbidden=self.forbidden,
        )


def read_cluster(
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    operator_namespace: str,
    needs: DeploymentNeeds,
    timeout_s: float = 10.0,
) -> ClusterSnapshot:
    api_client = load_api_client(kubeconfig, context)
    try:
        return ClusterReader(api_client, timeout_s).snapshot(namespace, operator_namespace, needs)
    finally:
        api_client.close()
