"""The chart's `lora` values: vLLM's LoRA flags on the server, the adapters' claim in every pod of a replica (workers
read the files too), VLLM_ALLOW_RUNTIME_LORA_UPDATING, and refusals. Rendered with real helm; the rendered flags
are parsed by the server's own parser (test_chart_args.py runs every ci/ file, lora-values.yaml included)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.chart import CI_VALUES_DIR, HelmError, by_kind, one, render

pytestmark = pytest.mark.helm


def _server_container(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    [server] = [
        d
        for d in by_kind(objects, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    spec = server["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_lora_values_render_vllms_flags_the_claim_and_the_runtime_switch() -> None:
    spec, container = _server_container(render([CI_VALUES_DIR / "lora-values.yaml"]))
    args = container["args"]
    flags = args[args.index("--enable-lora") :]
    assert flags[:7] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "64", "--max-cpu-loras", "8"]
    modules = flags[flags.index("--lora-modules") + 1 : flags.index("--lora-modules") + 3]
    assert [json.loads(m) for m in modules] == [
        {"name": "sql-lora", "path": "/adapters/sql"},
        {"name": "support-lora", "path": "/adapters/support"},
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == "adapters")
    assert volume["persistentVolumeClaim"] == {"claimName": "lora-adapters", "readOnly": True}


def test_lora_is_off_by_default_and_its_pieces_need_it() -> None:
    spec, container = _server_container(render())
    assert "--enable-lora" not in container["args"]
    assert all(v["name"] != "adapters" for v in spec["volumes"])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in {e["name"] for e in container["env"]}
    with pytest.raises(HelmError, match="lora.modules and lora.runtimeUpdating need lora.enabled"):
        render(values={"lora": {"modules": [{"name": "a", "path": "/a"}]}})
    with pytest.raises(HelmError, match="maxLoras"):
        render(values={"lora": {"enabled": True, "maxLoras": 0}})


def test_multi_node_workers_mount_the_adapters_too() -> None:
    values = {
        "multiNode": {"enabled": True, "nodes": 2},
        "engine": {"tensorParallelSize": 2},
        "lora": {"enabled": True, "existingClaim": "lora-adapters"},
    }
    group = one(render(values=values), "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        [container] = template["spec"]["containers"]
        assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container["volumeMounts"]
    assert "--enable-lora" not in group["workerTemplate"]["spec"]["containers"][0]["args"]
