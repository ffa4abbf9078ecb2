"""The multi-node option (multiNode.*): a LeaderWorkerSet whose pods form one tensor-parallel group (real helm)."""

from __future__ import annotations

import pytest

from tests.deploy.chart import CI_VALUES_DIR, HelmError, by_kind, one, render
from tests.deploy.test_chart_objects import _flag_value

pytestmark = pytest.mark.helm


def test_multinode_renders_a_leader_worker_set_whose_pods_form_one_tensor_parallel_group() -> None:
    objects = render([CI_VALUES_DIR / "multinode-values.yaml"])
    assert not by_kind(objects, "Deployment")
    lws = one(objects, "LeaderWorkerSet")["spec"]
    group = lws["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    [leader] = group["leaderTemplate"]["spec"]["containers"]
    [worker] = group["workerTemplate"]["spec"]["containers"]
    for container in (leader, worker):
        args = container["args"]
        assert _flag_value(args, "--nnodes") == "2" and _flag_value(args, "--tensor-parallel-size") == "2"
        assert _flag_value(args, "--node-rank") == "$(LWS_WORKER_INDEX)"
        assert _flag_value(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert _flag_value(args, "--master-port") == "29500"
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert "--port" in leader["args"] and leader["readinessProbe"] and leader["ports"][0]["name"] == "http"
    assert "readinessProbe" not in worker and "ports" not in worker
    # The Service reaches the leaders (the API servers) only.
    service = one(objects, "Service")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    assert group["leaderTemplate"]["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    assert group["workerTemplate"]["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"


def test_multinode_gpus_per_pod_are_the_ranks_per_node_and_bad_splits_fail() -> None:
    objects = render(
        [CI_VALUES_DIR / "multinode-values.yaml"],
        set_values=["gpu.enabled=true", "engine.tensorParallelSize=8", "multiNode.nodes=2"],
    )
    group = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        [container] = group[role]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    with pytest.raises(HelmError, match="multiple of multiNode.nodes"):
        render([CI_VALUES_DIR / "multinode-values.yaml"], set_values=["engine.tensorParallelSize=3"])


@pytest.mark.parametrize("scaler", ["autoscaling", "keda"])
def test_multinode_autoscaling_scales_the_leader_worker_set(scaler: str) -> None:
    objects = render([CI_VALUES_DIR / "multinode-values.yaml"], set_values=[f"{scaler}.enabled=true"])
    kind = "HorizontalPodAutoscaler" if scaler == "autoscaling" else "ScaledObject"
    target = one(objects, kind)["spec"]["scaleTargetRef"]
    lws = one(objects, "LeaderWorkerSet")
    assert target == {
        "apiVersion": lws["apiVersion"],
        "kind": "LeaderWorkerSet",
        "name": lws["metadata"]["name"],
    }
    single = render([], set_values=[f"{scaler}.enabled=true"])
    target = one(single, kind)["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == one(single, "Deployment")["metadata"]["name"]
