"""Static review of the images (no Docker engine runs here): pinned bases, non-root user matching the chart,
`pagedserve serve` entrypoint, a HEALTHCHECK, no model weights copied in, and COPY sources that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import CHART_DIR
from tests.deploy.tools import REPO_ROOT

DOCKERFILES = sorted((REPO_ROOT / "deploy" / "docker").glob("Dockerfile*"))


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)


def test_both_images_exist() -> None:
    assert [d.name for d in DOCKERFILES] == ["Dockerfile", "Dockerfile.cpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    defaults = _arg_defaults(instructions)
    for op, arg in instructions:
        if op != "FROM":
            continue
        image = arg.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), image)
        if image in {"build"}:  # a previous stage
            continue
        assert re.search(r":[0-9][\w.-]*$|@sha256:[0-9a-f]{64}$", image), (
            f"{dockerfile.name}: {image} is not pinned"
        )
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", defaults["TORCH_VERSION"]), "torch must be pinned exactly"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_non_root_serves_and_checks_health(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime = instructions[last_from:]
    users = [arg for op, arg in runtime if op == "USER"]
    chart_user = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["securityContext"]["runAsUser"]
    assert users and users[-1].split(":")[0] == str(chart_user), (
        f"runtime USER {users} != chart runAsUser {chart_user}"
    )
    entrypoint = next(arg for op, arg in runtime if op == "ENTRYPOINT")
    assert '"pagedserve", "serve"' in entrypoint
    healthcheck = next(arg for op, arg in runtime if op == "HEALTHCHECK")
    assert "/health" in healthcheck
    assert ("EXPOSE", "8000") in runtime


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_weights_are_baked_in_and_copies_exist(dockerfile: Path) -> None:
    for op, arg in _instructions(dockerfile):
        if op in {"COPY", "ADD"}:
            assert not re.search(r"\.(gguf|safetensors|bin|pt)\b", arg), (
                f"{dockerfile.name} copies weights: {arg}"
            )
            if "--from=" not in arg:
                for source in arg.split()[:-1]:
                    assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} missing"


def test_cpu_image_prebuilds_the_c_kernels_and_ships_no_compiler() -> None:
    """The build stage compiles ops/csrc for every ISA level into the folder PAGEDSERVE_KERNEL_DIR names; the runtime
    stage installs no compiler (tests/deploy/test_image_build.py checks the built image has none)."""
    instructions = _instructions(REPO_ROOT / "deploy" / "docker" / "Dockerfile.cpu")
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    build_runs = " ".join(arg for op, arg in instructions[:last_from] if op == "RUN")
    runtime_runs = " ".join(arg for op, arg in instructions[last_from:] if op == "RUN")
    assert "python -m pagedserve.ops.build --out /opt/pagedserve/kernels" in build_runs
    assert not re.search(r"\b(gcc|libc6-dev|build-essential)\b", runtime_runs)
    env = " ".join(arg for op, arg in instructions[last_from:] if op == "ENV")
    assert "PAGEDSERVE_KERNEL_DIR=/opt/pagedserve/kernels" in env
