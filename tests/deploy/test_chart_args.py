"""The chart's server arguments are real `pagedserve serve` flags: for every ci/ values file, deploy/kind's files and
every values example in docs/deploy.md and README.md, rendered with real helm and parsed by the server's own parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART_DIR, CI_VALUES_DIR, by_kind, one, render
from tests.deploy.tools import REPO_ROOT

pytestmark = pytest.mark.helm

SERVER_PORT = 8000
COMPONENT = "app.kubernetes.io/component"


@pytest.mark.parametrize("values_file", sorted(CI_VALUES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_rendered_server_args_are_real_pagedserve_serve_flags(values_file: Path) -> None:
    _assert_server_args_parse(render([values_file]))


def _documented_values() -> list[tuple[str, str]]:
    """Values the docs tell users to install with: deploy/kind's files and every ```yaml block of docs/deploy.md
    and README.md whose keys are chart values (blocks of Kubernetes objects are left out)."""
    top_level = set(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))
    found = [
        (f"deploy/kind/{p.name}", p.read_text())
        for p in sorted((REPO_ROOT / "deploy" / "kind").glob("values-*.yaml"))
    ]
    for doc in ("docs/deploy.md", "README.md"):
        blocks = re.findall(r"```yaml\n(.*?)```", (REPO_ROOT / doc).read_text(), flags=re.S)
        for number, block in enumerate(blocks, 1):
            values = yaml.safe_load(block)
            if isinstance(values, dict) and "apiVersion" not in values and set(values) <= top_level:
                found.append((f"{doc} yaml block {number}", block))
    return found


DOCUMENTED_VALUES = _documented_values()


@pytest.mark.parametrize("name,text", DOCUMENTED_VALUES, ids=[name for name, _ in DOCUMENTED_VALUES])
def test_documented_values_render_to_real_pagedserve_serve_flags(
    name: str, text: str, tmp_path: Path
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(text)
    _assert_server_args_parse(render([values_file]))


def _assert_server_args_parse(objects: list[dict[str, Any]]) -> None:
    from pagedserve.cli.args import config_from_args
    from pagedserve.cli.main import build_parser
    from pagedserve.config import ParallelConfig

    if by_kind(objects, "LeaderWorkerSet"):
        group = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
        pods = [(group["leaderTemplate"], "0"), (group["workerTemplate"], "1")]
    else:
        # The server's Deployment (the endpoint picker of inferenceExtension is another one).
        [server] = [
            d for d in by_kind(objects, "Deployment") if d["metadata"]["labels"].get(COMPONENT) == "server"
        ]
        pods = [(server["spec"]["template"], "0")]
    for template, index in pods:
        [container] = template["spec"]["containers"]
        assert container["command"] == ["pagedserve", "serve"]
        # What the kubelet passes once LWS has set these in the pod's environment.
        args = [
            a.replace("$(LWS_WORKER_INDEX)", index).replace("$(LWS_LEADER_ADDRESS)", "10.0.0.1")
            for a in container["args"]
        ]
        try:
            parsed = build_parser().parse_args(["serve", *args])
        except SystemExit as error:
            pytest.fail(f"pagedserve serve rejects the chart's args {args}: exit {error.code}")
        config_from_args(ParallelConfig, parsed).validate()
        if not parsed.headless:
            assert parsed.port == SERVER_PORT and parsed.host == "0.0.0.0"


def _server_args(values: dict[str, Any]) -> list[str]:
    objects = render(values=values)
    if by_kind(objects, "LeaderWorkerSet"):
        template = one(objects, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    else:
        [server] = [
            d for d in by_kind(objects, "Deployment") if d["metadata"]["labels"].get(COMPONENT) == "server"
        ]
        template = server["spec"]["template"]
    return template["spec"]["containers"][0]["args"]


def _cpu_threads(values: dict[str, Any]) -> str | None:
    args = _server_args(values)
    flags = [args[i + 1] for i, a in enumerate(args) if a == "--cpu-threads"]
    assert len(flags) <= 1, args
    return flags[0] if flags else None


CPU = {"gpu": {"enabled": False}}
MULTI = {"enabled": True, "nodes": 2}


@pytest.mark.parametrize(
    "values,threads",
    [
        ({**CPU}, "4"),  # the default request, 4 CPUs, no limit
        ({**CPU, "resources": {"requests": {"cpu": "3500m", "memory": "8Gi"}}}, "3"),
        ({**CPU, "resources": {"requests": {"cpu": 6}}, "engine": {"tensorParallelSize": 2}}, "3"),
        ({**CPU, "resources": {"requests": {"cpu": "500m"}}}, "1"),  # never zero
        # Multi-node: 4 ranks over 2 pods, 8 CPUs a pod: 4 per rank.
        (
            {
                **CPU,
                "resources": {"requests": {"cpu": "8"}},
                "engine": {"tensorParallelSize": 4},
                "multiNode": MULTI,
            },
            "4",
        ),
        ({**CPU, "engine": {"cpuThreads": 7}}, "7"),
        # A CPU limit: the engine follows its quota. GPU mode: no CPU threads.
        ({**CPU, "resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "4"}}}, None),
        ({}, None),
        # The user chose: their flag or variable is not contradicted.
        ({**CPU, "engine": {"extraArgs": ["--cpu-threads=2"]}}, None),
        ({**CPU, "extraEnv": [{"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "0-3"}]}, None),
        ({**CPU, "extraEnv": [{"name": "PAGEDSERVE_CPU_THREADS", "value": "2"}]}, None),
    ],
)
def test_cpu_mode_threads_follow_the_cpu_request_without_a_limit(
    values: dict[str, Any], threads: str | None
) -> None:
    assert _cpu_threads(values) == threads
    _assert_server_args_parse(render(values=values))
