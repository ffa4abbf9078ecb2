"""`pagedserve preflight` against a stand-in for a cluster.

No Kubernetes API server runs on our machines: `fake_apiserver.FakeApiServer` stands in for the cluster. It
serves recorded API objects (tests/kube/fixtures/) shaped exactly as the API server returns them, on loopback,
to the real `kubernetes` client configured from a real kubeconfig file. Each scenario edits the healthy cluster
the way a broken one looks and asserts each check's PASS/WARN/FAIL and the exit code. A few scenarios run the
CLI as a subprocess to prove the exit code and that no traceback is printed. The real-cluster path (kind) is
documented in docs/preflight.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pagedserve.cli.main import main
from tests.kube.fake_apiserver import SECRETS_PATH, healthy_cluster, running, write_kubeconfig

NODES = "/api/v1/nodes"
VERSION = "/version"
OPERATOR_PODS = "/api/v1/namespaces/gpu-operator/pods"
APISERVICE = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.custom.metrics.k8s.io"
SERVICEMONITOR_CRD = (
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com"
)
STORAGECLASSES = "/apis/storage.k8s.io/v1/storageclasses"

FULL_VALUES = {
    "replicaCount": 2,
    "engine": {
        "tensorParallelSize": 1
    },  # what this image's engine runs (engine-values refuses TP > 1 on GPUs)
    "gpu": {"enabled": True, "product": "NVIDIA-H100-80GB-HBM3", "runtimeClassName": "nvidia"},
    "model": {"source": "pvc", "existingClaim": "llama-weights"},
    "ingress": {"enabled": True, "className": "nginx"},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "autoscaling": {"enabled": True, "maxReplicas": 4},
}


def gpu_nodes(objects: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        n for n in objects[NODES]["items"] if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"
    ]


def run_preflight(
    tmp_path: Path,
    objects: dict[str, Any],
    values: dict[str, Any] | None = None,
    forbidden: set[str] | None = None,
    namespace: str = "llm",
) -> tuple[int, dict[str, Any]]:
    """Run `pagedserve preflight -o json` in-process against the fake API server; (exit code, report)."""
    args = ["preflight", "-n", namespace, "-o", "json"]
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        args += ["--values", str(values_file)]
    with running(objects, forbidden) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main([*args, "--kubeconfig", str(kubeconfig)])
    return code, json.loads(out.getvalue())


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def test_healthy_cluster_with_full_values_passes_everything(tmp_path: Path) -> None:
    code, report = run_preflight(tmp_path, healthy_cluster(), FULL_VALUES)
    assert code == 0
    assert set(statuses(report).values()) == {"PASS"}, statuses(report)
    assert "v24.3.0" in check(report, "gpu-operator")["observed"]  # read from the decoded Helm release
    assert (
        "revision 2" in check(report, "gpu-operator")["observed"]
    )  # the deployed revision, not the superseded one
    assert (
        "ip-10-0-1-31.ec2.internal: 8" in check(report, "gpu-nodes")["observed"]
    )  # only the H100 node matches


def test_healthy_cluster_without_values_passes(tmp_path: Path) -> None:
    code, report = run_preflight(tmp_path, healthy_cluster(), namespace="default")
    assert code == 0
    assert "FAIL" not in statuses(report).values()


def _no_gpu_operator(objects: dict[str, Any]) -> None:
    objects[OPERATOR_PODS]["items"] = []
    objects[SECRETS_PATH]["items"] = [
        s for s in objects[SECRETS_PATH]["items"] if "helm" not in s["metadata"]["name"]
    ]
    for node in gpu_nodes(objects):
        # Without the operator nothing labels the nodes or advertises nvidia.com/gpu.
        node["metadata"]["labels"] = {
            k: v for k, v in node["metadata"]["labels"].items() if "nvidia.com" not in k
        }
        for field in ("capacity", "allocatable"):
            node["status"][field].pop("nvidia.com/gpu")


def _old_containerd(objects: dict[str, Any]) -> None:
    gpu_nodes(objects)[0]["status"]["nodeInfo"]["containerRuntimeVersion"] = "containerd://1.6.28"


def _no_adapter(objects: dict[str, Any]) -> None:
    del objects[APISERVICE]


def _kubernetes_127(objects: dict[str, Any]) -> None:
    objects[VERSION].update(minor="27+", gitVersion="v1.27.16-eks-2f46c53")


def _no_allocatable_gpus(objects: dict[str, Any]) -> None:
    for node in gpu_nodes(objects):
        node["status"]["allocatable"]["nvidia.com/gpu"] = "0"


@pytest.mark.parametrize(
    ("breakage", "failing_check", "expected_words"),
    [
        (_no_gpu_operator, "gpu-operator", "no Helm release"),
        (_old_containerd, "container-runtime", "containerd://1.6.28"),
        (_no_adapter, "custom-metrics-api", "not registered"),
        (_kubernetes_127, "kubernetes-version", "v1.27.16"),
        (_no_allocatable_gpus, "gpu-nodes", "none has allocatable"),
    ],
    ids=["no-gpu-operator", "old-containerd", "no-adapter", "kubernetes-1.27", "no-allocatable-gpus"],
)
def test_broken_cluster_fails_the_right_check(
    tmp_path: Path, breakage: Callable[[dict[str, Any]], None], failing_check: str, expected_words: str
) -> None:
    objects = healthy_cluster()
    breakage(objects)
    code, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert code == 1
    result = check(report, failing_check)
    assert result["status"] == "FAIL"
    assert expected_words in result["observed"]
    assert result["fix"], "a FAIL must say how to fix it"


def test_no_gpu_operator_also_fails_gpu_nodes(tmp_path: Path) -> None:
    objects = healthy_cluster()
    _no_gpu_operator(objects)
    _, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert check(report, "gpu-nodes")["status"] == "FAIL"
    assert "gpu-operator" in check(report, "gpu-operator")["fix"]


def test_missing_adapter_only_warns_when_no_values_say_autoscaling(tmp_path: Path) -> None:
    objects = healthy_cluster()
    _no_adapter(objects)
    code, report = run_preflight(tmp_path, objects, namespace="default")
    assert code == 0
    assert check(report, "custom-metrics-api")["status"] == "WARN"


def test_adapter_registered_but_unavailable_fails(tmp_path: Path) -> None:
    objects = healthy_cluster()
    objects[APISERVICE]["status"]["conditions"][0].update(
        status="False",
        reason="FailedDiscoveryCheck",
        message="failing or missing response from https://10.100.4.2:6443",
    )
    code, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert code == 1
    assert "FailedDiscoveryCheck" in check(report, "custom-metrics-api")["observed"]


def test_kubernetes_128_warns_and_127_puts_cluster_on_an_old_matrix_row(tmp_path: Path) -> None:
    objects = healthy_cluster()
    objects[VERSION]["gitVersion"] = "v1.28.13"
    code, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert code == 0
    assert check(report, "kubernetes-version")["status"] == "WARN"
    _kubernetes_127(objects)
    _, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert "0.7.x" in check(report, "version-matrix")["observed"]


def test_old_cuda_with_fp8_on_h100_fails_the_hard_rule(tmp_path: Path) -> None:
    objects = healthy_cluster()
    for node in gpu_nodes(objects):
        labels = node["metadata"]["labels"]
        labels["nvidia.com/cuda.runtime-version.full"] = "12.1"
        labels["nvidia.com/cuda.runtime-version.minor"] = labels["nvidia.com/cuda.runtime.minor"] = "1"
    fp8 = {**FULL_VALUES, "engine": {"quantization": "fp8"}}
    code, report = run_preflight(tmp_path, objects, fp8)
    assert code == 1
    assert check(report, "version-matrix")["status"] == "FAIL"
    assert "fp8" in check(report, "version-matrix")["observed"]
    assert check(report, "engine-values")["status"] == "PASS"  # this image's engine runs --quantization fp8
    assert check(report, "cuda-driver")["status"] == "WARN"  # 12.1 meets the minimum, below 12.4
    code, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert check(report, "version-matrix")["status"] == "WARN"  # legacy level, but no FP8 kernels
    assert code == 0


def test_tensor_parallel_larger_than_any_node_fails(tmp_path: Path) -> None:
    values = {**FULL_VALUES, "engine": {"tensorParallelSize": 16}}
    code, report = run_preflight(tmp_path, healthy_cluster(), values)
    assert code == 1
    assert "tensor-parallel 16" in check(report, "gpu-nodes")["observed"]


@pytest.mark.parametrize("source", ["pvc", "hfcache"])
def test_rwo_claim_shared_by_replicas_fails(tmp_path: Path, source: str) -> None:
    objects = healthy_cluster()
    claim = objects["/api/v1/namespaces/llm/persistentvolumeclaims/llama-weights"]
    claim["spec"]["accessModes"] = claim["status"]["accessModes"] = ["ReadWriteOnce"]
    values = {
        **FULL_VALUES,
        "model": {**FULL_VALUES["model"], "source": source},
    }  # hfcache: a Hub cache on it
    code, report = run_preflight(tmp_path, objects, values)
    assert code == 1
    assert check(report, "model-storage")["status"] == "FAIL"
    assert "claim llama-weights" in check(report, "model-storage")["observed"]


def test_hub_download_needs_a_default_storage_class(tmp_path: Path) -> None:
    objects = healthy_cluster()
    for storage_class in objects[STORAGECLASSES]["items"]:
        storage_class["metadata"].pop("annotations", None)
    values = {**FULL_VALUES, "replicaCount": 1, "autoscaling": {"enabled": False}, "model": {"source": "hub"}}
    code, report = run_preflight(tmp_path, objects, values)
    assert code == 1
    assert "no default StorageClass" in check(report, "model-storage")["observed"]


def test_missing_crd_ingress_class_and_runtime_class_fail_when_values_need_them(tmp_path: Path) -> None:
    objects = healthy_cluster()
    del objects[SERVICEMONITOR_CRD]
    del objects["/apis/node.k8s.io/v1/runtimeclasses/nvidia"]
    values = {**FULL_VALUES, "ingress": {"enabled": True, "className": "traefik"}}
    code, report = run_preflight(tmp_path, objects, values)
    assert code == 1
    result = statuses(report)
    assert result["crd-servicemonitors"] == result["runtime-class"] == result["ingress-class"] == "FAIL"
    assert result["crd-prometheusrules"] == "PASS"


def test_unhealthy_operator_pod_warns(tmp_path: Path) -> None:
    objects = healthy_cluster()
    pod = objects[OPERATOR_PODS]["items"][3]
    pod["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}
    }
    code, report = run_preflight(tmp_path, objects, FULL_VALUES)
    assert code == 0
    assert check(report, "gpu-operator")["status"] == "WARN"
    assert "CrashLoopBackOff" in check(report, "gpu-operator")["observed"]


def test_403_on_a_list_exits_2_naming_the_permission(tmp_path: Path) -> None:
    code, report = run_preflight(tmp_path, healthy_cluster(), FULL_VALUES, forbidden={NODES})
    assert code == 2
    assert "403" in report["error"] and "nodes" in report["error"]
    assert report["checks"] == []


# --- the CLI as a subprocess: exit codes and messages as an operator sees them ---------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pagedserve.cli.main", "preflight", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


def test_cli_healthy_cluster_table_exits_0(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(FULL_VALUES))
    with running(healthy_cluster()) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        done = run_cli(
            "--kubeconfig", str(kubeconfig), "-n", "llm", "--values", str(tmp_path / "values.yaml")
        )
    assert done.returncode == 0, done.stderr
    assert "PASS  kubernetes-version" in done.stdout
    assert "17 passed, 0 warnings, 0 failed" in done.stdout


def test_cli_no_gpu_operator_exits_1(tmp_path: Path) -> None:
    objects = healthy_cluster()
    _no_gpu_operator(objects)
    with running(objects) as server:
        done = run_cli("--kubeconfig", str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
    assert done.returncode == 1
    assert "FAIL  gpu-operator" in done.stdout
    assert "helm install --wait gpu-operator" in done.stdout
    assert_no_traceback(done)


def test_cli_403_exits_2_without_traceback(tmp_path: Path) -> None:
    with running(healthy_cluster(), forbidden={NODES, SECRETS_PATH}) as server:
        done = run_cli("--kubeconfig", str(write_kubeconfig(tmp_path / "kubeconfig", server.url)))
    assert done.returncode == 2
    assert "403 Forbidden" in done.stderr
    assert "nodes (cluster scope)" in done.stderr and "secrets in namespace gpu-operator" in done.stderr
    assert_no_traceback(done)


def test_cli_unreachable_server_exits_2(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    done = run_cli("--kubeconfig", str(kubeconfig), "--timeout", "3")
    assert done.returncode == 2
    assert "cannot reach the API server" in done.stderr
    assert_no_traceback(done)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("clusters: [unclosed\n", "cannot load kubeconfig"),
        (
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\ncurrent-context: gone\n",
            "Expected object with name gone",
        ),
    ],
    ids=["missing-file", "invalid-yaml", "missing-context"],
)
def test_cli_bad_kubeconfig_exits_2(tmp_path: Path, content: str | None, expected: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if content is not None:
        kubeconfig.write_text(content)
    done = run_cli("--kubeconfig", str(kubeconfig))
    assert done.returncode == 2
    assert expected in done.stderr
    assert_no_traceback(done)


def test_wrong_token_exits_2_with_401(tmp_path: Path) -> None:
    with running(healthy_cluster()) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, token="expired")
        done = run_cli("--kubeconfig", str(kubeconfig))
    assert done.returncode == 2
    assert "401 Unauthorized" in done.stderr
    assert_no_traceback(done)


MODEL_OF_KIND = {
    "NodeList": "V1NodeList",
    "Namespace": "V1Namespace",
    "PodList": "V1PodList",
    "SecretList": "V1SecretList",
    "StorageClassList": "V1StorageClassList",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "APIService": "V1APIService",
    "CustomResourceDefinition": "V1CustomResourceDefinition",
    "IngressClassList": "V1IngressClassList",
    "RuntimeClass": "V1RuntimeClass",
}


def test_fixtures_deserialize_into_the_clients_models() -> None:
    """The recorded objects validate against the kubernetes client's own models (required fields, types)."""
    from kubernetes import client

    api = client.ApiClient()
    for path, obj in healthy_cluster().items():
        model = "VersionInfo" if path == VERSION else MODEL_OF_KIND[obj["kind"]]
        parsed = api.deserialize(json.dumps(obj), model, "application/json")
        assert type(parsed).__name__ == model, path
        assert api.sanitize_for_serialization(parsed).get("metadata", {}).get("name") == obj.get(
            "metadata", {}
        ).get("name")
