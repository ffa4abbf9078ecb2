"""Assertions on the objects the chart renders (real helm): scheduling, probes, drain, security, storage,
networking, autoscaling and the schema's typo rejection."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import CI_VALUES_DIR, DASHBOARD_FILE, HelmError, by_kind, one, render

pytestmark = pytest.mark.helm

SERVER_PORT = 8000
COMPONENT = "app.kubernetes.io/component"


def _pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def _server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in _pod_spec(objects)["containers"] if c["name"] == "server")


def _flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _all_pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = [
        (f"Deployment/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in by_kind(objects, "Deployment")
    ]
    specs += [
        (f"Job/{o['metadata']['name']}", o["spec"]["template"]["spec"]) for o in by_kind(objects, "Job")
    ]
    specs += [(f"Pod/{o['metadata']['name']}", o["spec"]) for o in by_kind(objects, "Pod")]
    return specs


@pytest.mark.parametrize("tensor_parallel_size", [1, 2, 4, 8])
def test_gpu_limit_equals_tensor_parallel_size(tensor_parallel_size: int) -> None:
    objects = render(
        set_values=[f"engine.tensorParallelSize={tensor_parallel_size}", "gpu.product=NVIDIA-H100-80GB-HBM3"]
    )
    server = _server(objects)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == tensor_parallel_size
    assert server["resources"]["requests"]["nvidia.com/gpu"] == tensor_parallel_size
    assert _flag_value(server["args"], "--tensor-parallel-size") == str(tensor_parallel_size)
    pod = _pod_spec(objects)
    assert pod["nodeSelector"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_gpu_count_cannot_be_overridden_away_from_tensor_parallel_size() -> None:
    objects = render(set_values=["engine.tensorParallelSize=2", "resources.limits.nvidia\\.com/gpu=8"])
    assert _server(objects)["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_cpu_mode_requests_no_gpu_and_no_gpu_nodes() -> None:
    objects = render([CI_VALUES_DIR / "cpu-values.yaml"])
    pod = _pod_spec(objects)
    server = _server(objects)
    assert "nvidia.com/gpu" not in str(server["resources"])
    assert "nvidia.com/gpu" not in str(pod.get("nodeSelector", {})) + str(pod.get("tolerations", []))
    assert "runtimeClassName" not in pod
    assert "--gpu-memory-utilization" not in server["args"]
    assert _flag_value(server["args"], "--kv-cache-memory-bytes") == "268435456"


def test_probes_use_ready_and_health_on_the_server_port() -> None:
    server = _server(render())
    assert server["ports"] == [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]
    assert server["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup_budget = server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"]
    assert startup_budget >= 600, "a model load takes minutes: the startup probe must allow for it"
    assert _flag_value(server["args"], "--port") == str(SERVER_PORT)


@pytest.mark.parametrize(("pre_stop", "shutdown"), [(20, 30), (0, 5), (45, 300)])
def test_grace_period_covers_pre_stop_and_shutdown_timeout(pre_stop: int, shutdown: int) -> None:
    objects = render(
        set_values=[f"drain.preStopSleepSeconds={pre_stop}", f"engine.shutdownTimeout={shutdown}"]
    )
    pod = _pod_spec(objects)
    server = _server(objects)
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre_stop)]
    assert _flag_value(server["args"], "--shutdown-timeout") == str(shutdown)
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + shutdown


def test_too_short_grace_period_is_refused() -> None:
    with pytest.raises(HelmError, match="terminationGracePeriodSeconds"):
        render(set_values=["drain.terminationGracePeriodSeconds=30", "drain.preStopSleepSeconds=20"])


@pytest.mark.parametrize(
    "values_file", ["gpu-values.yaml", "ingress-tls-values.yaml", "existing-claim-values.yaml"]
)
def test_every_pod_runs_restricted(values_file: str) -> None:
    objects = render([CI_VALUES_DIR / values_file])
    for name, spec in _all_pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not any("hostPath" in volume for volume in spec.get("volumes", [])), name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, (name, container["name"])
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False


def test_writable_caches_and_shared_memory_are_empty_dirs() -> None:
    objects = render()
    pod = _pod_spec(objects)
    server = _server(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and volumes["dshm"]["emptyDir"]["sizeLimit"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/dev/shm"]["name"]]
    env = {e["name"]: e.get("value") for e in server["env"]}
    writable = [path for path, m in mounts.items() if "emptyDir" in volumes[m["name"]]]
    for variable in ("HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert any(env[variable].startswith(path) for path in writable), (
            f"{variable}={env[variable]} not writable"
        )
    assert "/tmp" in writable


def test_engine_values_become_vllm_flags() -> None:
    engine = {
        "maxModelLen": 4096,
        "maxNumSeqs": 64,
        "runner": "pooling",
        "dtype": "bfloat16",
        "quantization": "awq",
        "kvCacheDtype": "fp8",
        "kvCacheMemoryBytes": 8589934592,
        "gpuMemoryUtilization": 0.85,
        "enablePrefixCaching": False,
        "extraArgs": ["--block-size", "32"],
    }
    server = {"maxRequestBodyBytes": 1048576, "maxNumQueuedReqs": 99}
    objects = render(values={"engine": engine, "server": server, "model": {"servedModelName": "my-model"}})
    args = _server(objects)["args"]
    assert _server(objects)["command"] == ["pagedserve", "serve"]
    expected = {
        "--max-model-len": "4096",
        "--max-num-seqs": "64",
        "--runner": "pooling",
        "--dtype": "bfloat16",
        "--quantization": "awq",
        "--kv-cache-dtype": "fp8",
        "--kv-cache-memory-bytes": "8589934592",
        "--gpu-memory-utilization": "0.85",
        "--served-model-name": "my-model",
        "--block-size": "32",
        "--max-request-body-bytes": "1048576",
        "--max-num-queued-reqs": "99",
    }
    for flag, value in expected.items():
        assert _flag_value(args, flag) == value
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    # Values the engine would refuse at startup fail the install instead (the schema lists what it runs).
    for refused in (
        "engine.quantization=bitsandbytes",
        "engine.kvCacheDtype=fp8_e5m2",
        "engine.runner=draft",
    ):
        with pytest.raises(HelmError, match="quantization|kvCacheDtype|runner"):
            render(set_values=[refused])


def test_api_key_comes_from_a_secret_never_from_args() -> None:
    objects = render([CI_VALUES_DIR / "ingress-tls-values.yaml"])
    server = _server(objects)
    key_env = next(e for e in server["env"] if e["name"] == "VLLM_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "pagedserve-api-key", "key": "api-key"}
    assert "--api-key" not in server["args"]
    test_pod = one(objects, "Pod")
    assert any(e["name"] == "VLLM_API_KEY" for e in test_pod["spec"]["containers"][0]["env"])
    with pytest.raises(HelmError, match="existingSecret"):
        render(set_values=["apiKey.enabled=true"])


def test_network_policy_selects_the_server_pods_and_admits_only_known_peers() -> None:
    objects = render()
    policy = one(objects, "NetworkPolicy")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = rule["from"]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in [
        p.get("namespaceSelector", {}).get("matchLabels") for p in peers
    ]
    assert {"kubernetes.io/metadata.name": "monitoring"} in [
        p.get("namespaceSelector", {}).get("matchLabels") for p in peers
    ]
    test_labels = one(objects, "Pod")["metadata"]["labels"]
    assert any(
        "namespaceSelector" not in p and p["podSelector"]["matchLabels"].items() <= test_labels.items()
        for p in peers
    ), "the helm test pod must be admitted"
    # The server pods themselves are not a peer: the policy selects, it does not admit, them.
    assert not any(
        "namespaceSelector" not in p and p["podSelector"]["matchLabels"].items() <= pod_labels.items()
        for p in peers
    )


def test_service_pdb_and_anti_affinity_select_the_server_pods() -> None:
    objects = render()
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(objects, "Service")["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    soft = _pod_spec(objects)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][0]
    assert soft["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert soft["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    hard = _pod_spec(render(set_values=["podAntiAffinity=hard"]))["affinity"]["podAntiAffinity"]
    assert (
        hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    )


def test_hub_source_prestages_a_pinned_revision_and_pods_wait_for_it() -> None:
    objects = render([CI_VALUES_DIR / "gpu-values.yaml"])
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "60Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    job = one(objects, "Job")
    job_spec = job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in job_spec["containers"][0]["env"]}
    revision = "945c8663693130f8be2ee66210e062158b2a9693"
    assert env["MODEL_REVISION"]["value"] == revision
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert job_spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    pod = _pod_spec(objects)
    [wait] = pod["initContainers"]
    wait_env = {e["name"]: e["value"] for e in wait["env"]}
    assert wait_env["EXPECTED_MARKER"] == f"meta-llama/Llama-3.1-8B-Instruct@{revision}"
    assert wait_env["MODEL_PATH"] == env["MODEL_PATH"]["value"]
    assert _server(objects)["args"][0] == wait_env["MODEL_PATH"]
    model_volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model_volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    with pytest.raises(HelmError, match="revision"):
        render(set_values=["model.source=hub", "model.name=org/model"])


def test_existing_claim_is_mounted_read_only_behind_the_wait() -> None:
    objects = render([CI_VALUES_DIR / "existing-claim-values.yaml"])
    assert not by_kind(objects, "Job") and not by_kind(objects, "PersistentVolumeClaim")
    pod = _pod_spec(objects)
    assert (
        next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"]
        == "models-shared"
    )
    assert _server(objects)["args"][0] == "/models/qwen2.5-7b-instruct"
    assert pod["initContainers"][0]["name"] == "wait-for-model"


def test_bundled_model_needs_no_volume_and_no_wait() -> None:
    pod = _pod_spec(render())
    assert "initContainers" not in pod
    assert not any(v["name"] == "model" for v in pod["volumes"])


def test_ingress_is_streaming_safe_with_tls() -> None:
    ingress = one(render([CI_VALUES_DIR / "ingress-tls-values.yaml"]), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    # 1 MiB above the server's 32 MiB limit: the server, not nginx, answers oversize bodies.
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == str(32 * 2**20 + 2**20)
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "llm-example-com-tls", "hosts": ["llm.example.com"]}]


def test_hpa_scales_on_per_pod_queue_depth_with_behaviour() -> None:
    objects = render([CI_VALUES_DIR / "hpa-values.yaml"])
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    metrics = {m["pods"]["metric"]["name"]: m for m in hpa["spec"]["metrics"]}
    assert all(m["type"] == "Pods" for m in metrics.values())
    assert metrics["vllm_num_requests_waiting"]["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": "3",
    }
    assert metrics["vllm_num_requests_running"]["pods"]["target"]["averageValue"] == "64"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 900
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert "replicas" not in one(objects, "Deployment")["spec"], "the HPA owns the replica count"


def test_keda_alternative_and_exclusivity() -> None:
    objects = render([CI_VALUES_DIR / "keda-values.yaml"])
    scaled = one(objects, "ScaledObject")
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert query == 'sum(vllm:num_requests_waiting{namespace="llm",service="pagedserve"})'
    with pytest.raises(HelmError, match="enable only one"):
        render([CI_VALUES_DIR / "keda-values.yaml"], set_values=["autoscaling.enabled=true"])


def test_dashboard_configmap_carries_the_file_for_the_grafana_sidecar() -> None:
    configmap = one(render(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["pagedserve.json"] == DASHBOARD_FILE.read_text().rstrip("\n")


def test_helm_test_pod_calls_v1_models_through_the_service() -> None:
    objects = render()
    test_pod = one(objects, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    url = next(e["value"] for e in test_pod["spec"]["containers"][0]["env"] if e["name"] == "MODELS_URL")
    assert url == f"http://{one(objects, 'Service')['metadata']['name']}:{SERVER_PORT}/v1/models"


@pytest.mark.parametrize(
    ("assignment", "misspelled"),
    [
        ("engine.maxNumSeq=8", "maxNumSeq"),
        ("replicas=2", "replicas"),
        ("gpu.enable=false", "enable"),
        ("model.sorce=hub", "sorce"),
    ],
)
def test_schema_rejects_misspelled_keys(assignment: str, misspelled: str) -> None:
    with pytest.raises(HelmError, match=f"additional properties '{misspelled}' not allowed"):
        render(set_values=[assignment])


def test_schema_rejects_bad_values() -> None:
    with pytest.raises(HelmError, match="source"):
        render(set_values=["model.source=s3"])
    with pytest.raises(HelmError, match="tensorParallelSize"):
        render(set_values=["engine.tensorParallelSize=0"])
