"""`model.source: hfcache`: a claim holding a Hugging Face Hub cache (what a vLLM pod's --download-dir or HF_HOME left)
is served by Hub id with --download-dir and --revision, and the init container waits for the repo's snapshots.
Rendered with real helm; the wait script runs in a real shell against a cache laid out by tests/hub_cache_writer.py
(the server's lookup of that cache: tests/unit/models/test_hub_cache.py, tests/e2e/test_e2e_vllm_manifest_flags.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import pytest

from tests.deploy.chart import CI_VALUES_DIR, HelmError, by_kind, render
from tests.hub_cache_writer import add_snapshot

pytestmark = pytest.mark.helm


def _server_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = by_kind(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]


def test_the_hub_id_is_served_from_the_claim_with_download_dir_and_revision() -> None:
    pod = _server_pod(render([CI_VALUES_DIR / "hfcache-values.yaml"]))
    args = pod["containers"][0]["args"]
    assert args[:5] == ["Qwen/Qwen2.5-0.5B-Instruct", "--download-dir", "/models", "--revision", "main"]
    assert args[args.index("--served-model-name") + 1] == "Qwen/Qwen2.5-0.5B-Instruct"
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"]["claimName"] == "hf-cache"
    [wait] = pod["initContainers"]
    env = {e["name"]: e["value"] for e in wait["env"]}
    assert env["MODEL_PATH"] == "/models/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots"
    assert env["COMPLETE_MARKER"] == ""  # a Hub cache has no marker
    assert not by_kind(render([CI_VALUES_DIR / "hfcache-values.yaml"]), "Job")  # nothing downloads


def test_no_revision_means_the_servers_default_main() -> None:
    pod = _server_pod(render(values={"model": {"source": "hfcache", "existingClaim": "c", "name": "org/m"}}))
    assert "--revision" not in pod["containers"][0]["args"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "org/m"}, "existingClaim"),
        ({"existingClaim": "c"}, "name"),
        ({"existingClaim": "c", "name": "/abs/path"}, "pattern"),
    ],
)
def test_hfcache_needs_a_claim_and_a_hub_id(model: dict[str, str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(values={"model": {"source": "hfcache", **model}})


def test_the_wait_script_passes_once_the_snapshots_exist(tmp_path: pathlib.Path) -> None:
    [wait] = _server_pod(render([CI_VALUES_DIR / "hfcache-values.yaml"]))["initContainers"]
    env = {e["name"]: e["value"] for e in wait["env"]}
    cache = tmp_path / "models"
    env.update(
        MODEL_PATH=str(cache / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots"), WAIT_TIMEOUT_SECONDS="0"
    )

    def run() -> subprocess.CompletedProcess[str]:
        command = [*wait["command"], *wait["args"]]
        return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)

    missing = run()
    assert missing.returncode == 1 and "not complete after 0s" in missing.stderr
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    add_snapshot(cache, "Qwen/Qwen2.5-0.5B-Instruct", folder, "a" * 40, refs=("main",))
    ready = run()
    assert ready.returncode == 0 and "is complete" in ready.stdout
