"""The Gateway API entry point (gateway.httpRoute.*) and the Inference Extension (inferenceExtension.*): the
HTTPRoute, the InferencePool and its objectives, the endpoint picker and what the NetworkPolicy admits (real helm)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import CI_VALUES_DIR, NAMESPACE, HelmError, by_kind, one, render

pytestmark = pytest.mark.helm

SERVER_PORT = 8000
COMPONENT = "app.kubernetes.io/component"
GATEWAY = {"name": "inference-gateway", "namespace": "gateway-system"}
INFERENCE = CI_VALUES_DIR / "inference-extension-values.yaml"


def _route_values(**route: Any) -> dict[str, Any]:
    return {"gateway": {"httpRoute": {"parentRefs": [GATEWAY], **route}}}


def _deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [deployment] = [
        d for d in by_kind(objects, "Deployment") if d["metadata"]["labels"][COMPONENT] == component
    ]
    return deployment


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _gateway_kinds(objects: list[dict[str, Any]]) -> set[str]:
    kinds = {"HTTPRoute", "InferencePool", "InferenceObjective", "Role", "RoleBinding"}
    return {o["kind"] for o in objects} & kinds


def test_defaults_render_no_route_and_no_pool() -> None:
    # Without a Gateway to attach to, the chart installs on clusters without the Gateway API CRDs.
    objects = render()
    assert _gateway_kinds(objects) == set()
    assert [d["metadata"]["name"] for d in by_kind(objects, "Deployment")] == ["pagedserve"]
    peers = one(objects, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert not any("gateway.networking.k8s.io/gateway-name" in str(p) for p in peers)


def test_http_route_sends_the_gateways_traffic_to_the_service() -> None:
    objects = render([CI_VALUES_DIR / "gateway-values.yaml"])
    route = one(objects, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{**GATEWAY, "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    [rule] = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    service = one(objects, "Service")
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert rule["timeouts"] == {"request": "1800s"}
    assert not by_kind(objects, "Ingress") and not by_kind(objects, "InferencePool")


def test_http_route_timeout_path_and_switch() -> None:
    [rule] = one(render(values=_route_values(pathPrefix="/v1", requestTimeout="")), "HTTPRoute")["spec"][
        "rules"
    ]
    assert rule["matches"][0]["path"]["value"] == "/v1"
    assert "timeouts" not in rule, "an empty requestTimeout leaves the implementation's default"
    # The default bounds a whole streamed generation generously, as the Ingress' read timeout does.
    [rule] = one(render(values=_route_values()), "HTTPRoute")["spec"]["rules"]
    assert rule["timeouts"]["request"] == "3600s"
    off = render(values={"gateway": {"httpRoute": {"enabled": False, "parentRefs": [GATEWAY]}}})
    assert not by_kind(off, "HTTPRoute")


def test_http_route_and_legacy_ingress_coexist_during_a_migration() -> None:
    objects = render([CI_VALUES_DIR / "ingress-tls-values.yaml", CI_VALUES_DIR / "gateway-values.yaml"])
    service = one(objects, "Service")["metadata"]["name"]
    ingress_backend = one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert ingress_backend["service"]["name"] == service
    assert one(objects, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0]["name"] == service


def test_inference_extension_routes_to_a_pool_of_the_server_pods() -> None:
    objects = render([INFERENCE])
    pool = one(objects, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    route = one(objects, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool["metadata"]["name"]}
    ]
    server = _deployment(objects, "server")
    epp = _deployment(objects, "endpoint-picker")
    selector = pool["spec"]["selector"]["matchLabels"]
    assert _selects(selector, server["spec"]["template"]["metadata"]["labels"])
    assert not _selects(selector, epp["spec"]["template"]["metadata"]["labels"])
    [container_port] = server["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert (
        pool["spec"]["targetPorts"]
        == [{"number": container_port["containerPort"]}]
        == [{"number": SERVER_PORT}]
    )
    # The pool's endpoint picker is the EPP's Service, on the port that reaches its ext-proc container port.
    picker = pool["spec"]["endpointPickerRef"]
    assert picker["failureMode"] == "FailOpen"
    epp_service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == picker["name"])
    assert _selects(epp_service["spec"]["selector"], epp["spec"]["template"]["metadata"]["labels"])
    service_port = next(p for p in epp_service["spec"]["ports"] if p["port"] == picker["port"]["number"])
    [epp_container] = epp["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in epp_container["ports"]}
    assert ports[service_port["targetPort"]] == 9002 and ports["grpc-health"] == 9003
    # The server's own Service, PDB and ServiceMonitor never pick up the EPP pod.
    server_service = one([s for s in by_kind(objects, "Service") if s is not epp_service], "Service")
    assert not _selects(server_service["spec"]["selector"], epp["spec"]["template"]["metadata"]["labels"])
    pdb = one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert not _selects(pdb, epp["spec"]["template"]["metadata"]["labels"])


def test_endpoint_picker_runs_the_pinned_upstream_image_against_this_pool() -> None:
    objects = render([INFERENCE])
    pool = one(objects, "InferencePool")["metadata"]["name"]
    epp = _deployment(objects, "endpoint-picker")
    [container] = epp["spec"]["template"]["spec"]["containers"]
    image, tag = container["image"].rsplit(":", 1)
    assert image == "ghcr.io/llm-d/llm-d-router-endpoint-picker" and tag.startswith("v"), container["image"]
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == pool
    assert args[args.index("--pool-namespace") + 1] == NAMESPACE
    assert args[args.index("--pool-group") + 1] == "inference.networking.k8s.io"
    assert "--ha-enable-leader-election" not in args and epp["spec"]["replicas"] == 1
    assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_endpoint_picker_pod_runs_restricted_with_its_own_token() -> None:
    objects = render([INFERENCE])
    spec = _deployment(objects, "endpoint-picker")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["enableServiceLinks"] is False
    [container] = spec["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]} and context["runAsNonRoot"] is True
    # It watches the API; the server pods still mount no token.
    assert spec["automountServiceAccountToken"] is True
    server_spec = _deployment(objects, "server")["spec"]["template"]["spec"]
    assert server_spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] != server_spec["serviceAccountName"]


def _granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in rules
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_endpoint_picker_may_read_the_pool_its_pods_and_the_objectives_only() -> None:
    objects = render([INFERENCE])
    epp = _deployment(objects, "endpoint-picker")
    account = epp["spec"]["template"]["spec"]["serviceAccountName"]
    [binding] = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    role = one(objects, "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    rules = role["rules"]
    read = {"get", "list", "watch"}
    assert _granted(rules, "", "pods") == read
    assert _granted(rules, "inference.networking.k8s.io", "inferencepools") == read
    for group in ("llm-d.ai", "inference.networking.x-k8s.io"):
        assert _granted(rules, group, "inferenceobjectives") == read
    assert all(set(rule["verbs"]) == read for rule in rules), "one replica needs no write access"
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")


def test_several_endpoint_pickers_elect_a_leader() -> None:
    objects = render([INFERENCE], set_values=["inferenceExtension.endpointPicker.replicas=2"])
    epp = _deployment(objects, "endpoint-picker")
    assert epp["spec"]["replicas"] == 2 and epp["spec"]["strategy"] == {"type": "Recreate"}
    assert "--ha-enable-leader-election" in epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"create", "update"} <= _granted(one(objects, "Role")["rules"], "coordination.k8s.io", "leases")


def test_objectives_point_at_the_pool_with_their_priorities() -> None:
    objects = render([INFERENCE])
    pool = one(objects, "InferencePool")["metadata"]["name"]
    objectives = {o["metadata"]["name"]: o for o in by_kind(objects, "InferenceObjective")}
    assert set(objectives) == {"interactive", "batch"}
    assert (
        objectives["interactive"]["spec"]["priority"] == 10 and objectives["batch"]["spec"]["priority"] == -10
    )
    for objective in objectives.values():
        assert objective["apiVersion"] == "llm-d.ai/v1alpha2"
        assert objective["spec"]["poolRef"] == {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": pool,
        }
    legacy = render(
        values={
            "inferenceExtension": {
                "enabled": True,
                "objectiveApiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "objectives": [{"name": "default"}],
            }
        }
    )
    objective = one(legacy, "InferenceObjective")
    assert objective["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    assert "priority" not in objective["spec"], "an unset priority is the API's default (0)"
    # No route without a Gateway, but the pool and its picker are there for a route of your own.
    assert not by_kind(legacy, "HTTPRoute") and one(legacy, "InferencePool")


def test_network_policy_admits_the_gateways_and_the_endpoint_picker() -> None:
    objects = render(
        [INFERENCE],
        values=_route_values() | {"gateway": {"httpRoute": {"parentRefs": [GATEWAY, {"name": "internal"}]}}},
    )
    peers = one(objects, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    for namespace, name in (("gateway-system", "inference-gateway"), (NAMESPACE, "internal")):
        assert {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
        } in peers, (namespace, name)
    epp_labels = _deployment(objects, "endpoint-picker")["spec"]["template"]["metadata"]["labels"]
    assert any(
        "namespaceSelector" not in p and _selects(p["podSelector"]["matchLabels"], epp_labels) for p in peers
    ), "the endpoint picker scrapes the pods' /metrics"
    # A parent that is not a Gateway (e.g. a mesh Service) adds no Gateway peer.
    mesh = render(
        values={"gateway": {"httpRoute": {"parentRefs": [{"name": "svc", "kind": "Service", "group": ""}]}}}
    )
    assert "gateway-name" not in str(one(mesh, "NetworkPolicy")["spec"])


def test_inference_extension_pools_the_leaders_of_a_multinode_release() -> None:
    objects = render([CI_VALUES_DIR / "multinode-values.yaml", INFERENCE])
    group = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    selector = one(objects, "InferencePool")["spec"]["selector"]["matchLabels"]
    assert _selects(selector, group["leaderTemplate"]["metadata"]["labels"])
    assert not _selects(selector, group["workerTemplate"]["metadata"]["labels"])


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("gateway.httpRoute.parentRef[0].name=gw", "additional properties 'parentRef' not allowed"),
        ("inferenceExtension.enable=true", "additional properties 'enable' not allowed"),
        ("inferenceExtension.failureMode=FailSafe", "failureMode': value must be one of"),
        ("gateway.httpRoute.requestTimeout=1 hour", "requestTimeout': '1 hour' does not match"),
        ("inferenceExtension.objectiveApiVersion=inference.networking.k8s.io/v1", "objectiveApiVersion"),
        ("gateway.httpRoute.parentRefs[0].namespace=gw", "missing property 'name'"),
    ],
)
def test_schema_rejects_bad_gateway_values(assignment: str, message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(set_values=[assignment])
