"""The version compatibility matrix (data/version_matrix.yaml) and the check that applies it to a cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from pagedserve import __version__
from pagedserve.kube.report import CheckResult, Status
from pagedserve.kube.versions import format_version, parse_version, version_at_least

WARN_STATUSES = {"legacy": "legacy", "not-recommended": "not recommended for new deployments"}


@dataclass(frozen=True)
class EngineRow:
    """One row of the seed's matrix: an engine release and the stack it was built and tested for."""

    version: str
    cuda: str
    kubernetes_min: str
    gpu_operator_min: str
    python: tuple[str, str]
    transformers: str
    status: str
    notes: str


@dataclass(frozen=True)
class HardRule:
    id: str
    engine_versions: tuple[str, ...]
    cuda_below: str
    quantization: str
    gpu_families: tuple[str, ...]
    message: str

    def applies_to(self, engine_version: str) -> bool:
        return any(_version_matches(engine_version, pattern) for pattern in self.engine_versions)


@dataclass(frozen=True)
class ReleaseNeeds:
    """What one pagedserve release needs from the cluster, the host and the image."""

    version: str
    matches_vllm: str
    cuda_min: str
    cuda_recommended: str
    kubernetes_min: str
    kubernetes_recommended: str
    gpu_operator_min: str
    gpu_operator_recommended: str
    containerd_min: str
    python: tuple[str, str]
    transformers_min: str


@dataclass(frozen=True)
class Matrix:
    rows: tuple[EngineRow, ...]
    hard_rules: tuple[HardRule, ...]
    releases: tuple[ReleaseNeeds, ...]

    def row(self, version: str) -> EngineRow:
        for row in self.rows:
            if _version_matches(version, row.version):
                return row
        raise ValueError(f"engine version {version!r} is not in the compatibility matrix")


def _version_matches(version: str, pattern: str) -> bool:
    """'0.8.2' matches '0.8.2' and '0.8.x'; '0.1.0' matches release '0.1'."""
    regex = re.escape(pattern).replace(r"\.x", r"\.\d+")
    return re.fullmatch(regex + r"(\.\d+)*", version) is not None


@cache
def load_matrix() -> Matrix:
    raw = yaml.safe_load(resources.files("pagedserve.kube").joinpath("data/version_matrix.yaml").read_text())
    rows = tuple(
        EngineRow(
            version=r["version"],
            cuda=r["cuda"],
            kubernetes_min=r["kubernetes_min"],
            gpu_operator_min=r["gpu_operator_min"],
            python=(r["python"][0], r["python"][1]),
            transformers=r["transformers"],
            status=r["status"],
            notes=r["notes"],
        )
        for r in raw["vllm"]
    )
    rules = tuple(
        HardRule(
            id=r["id"],
            engine_versions=tuple(r["engine_versions"]),
            cuda_below=r["cuda_below"],
            quantization=r["quantization"],
            gpu_families=tuple(r["gpu_families"]),
            message=r["message"],
        )
        for r in raw["hard_rules"]
    )
    releases = tuple(
        ReleaseNeeds(**{**r, "python": (r["python"][0], r["python"][1])}) for r in raw["pagedserve"]
    )
    return Matrix(rows=rows, hard_rules=rules, releases=releases)


def release_needs(version: str = __version__) -> ReleaseNeeds:
    """The matrix entry of a pagedserve release (default: this one)."""
    for release in load_matrix().releases:
        if _version_matches(version, release.version):
            return release
    raise ValueError(f"pagedserve {version} has no entry in data/version_matrix.yaml")


@dataclass(frozen=True)
class StackVersions:
    """What a cluster (or host) runs; None where it could not be read."""

    cuda: tuple[int, ...] | None
    kubernetes: tuple[int, ...] | None
    gpu_operator: tuple[int, ...] | None
    gpu_families: frozenset[str]
    quantization: str | None
    """The planned weight quantization; None when no values file says."""


def _meets(row: EngineRow, stack: StackVersions) -> bool:
    checks = [
        (stack.cuda, row.cuda),
        (stack.kubernetes, row.kubernetes_min),
        (stack.gpu_operator, row.gpu_operator_min),
    ]
    return all(found is None or version_at_least(found, wanted) for found, wanted in checks)


def check_version_matrix(
    engine_version: str, stack: StackVersions, matrix: Matrix | None = None
) -> CheckResult:
    """Warn on legacy / not-recommended combinations, fail on the hard rule (engine and CUDA move together)."""
    matrix = matrix or load_matrix()
    row = matrix.row(engine_version)
    required = (
        f"engine {engine_version}: CUDA >= {row.cuda}, Kubernetes >= {row.kubernetes_min}, "
        f"GPU operator >= {row.gpu_operator_min}"
    )
    cuda_text = format_version(stack.cuda) if stack.cuda else "unknown"
    for rule in matrix.hard_rules:
        hits_rule = (
            rule.applies_to(engine_version)
            and stack.cuda is not None
            and not version_at_least(stack.cuda, rule.cuda_below)
            and stack.gpu_families & set(rule.gpu_families)
        )
        if not hits_rule:
            continue
        seen = f"CUDA {cuda_text} on {', '.join(sorted(stack.gpu_families & set(rule.gpu_families)))} GPUs"
        fix = f"upgrade the driver to CUDA >= {rule.cuda_below} together with the engine"
        if stack.quantization == rule.quantization:
            return CheckResult(
                "version-matrix",
                Status.FAIL,
                f"{seen} with {rule.quantization}: {rule.message}",
                required,
                fix,
            )
        if stack.quantization is None:
            return CheckResult(
                "version-matrix",
                Status.WARN,
                f"{seen}: {rule.quantization} serving would fail ({rule.message})",
                required,
                fix,
            )
    if row.status in WARN_STATUSES:
        return CheckResult(
            "version-matrix",
            Status.WARN,
            f"engine {row.version} is {WARN_STATUSES[row.status]} in the matrix",
            required,
            "move to the recommended row: " + _recommended(matrix),
        )
    if _meets(row, stack):
        return CheckResult(
            "version-matrix", Status.PASS, f"cluster meets the {row.version} row ({row.notes})", required
        )
    level = next((r for r in matrix.rows if _meets(r, stack)), None)
    if level is None:
        return CheckResult(
            "version-matrix",
            Status.FAIL,
            "cluster is below every row of the matrix",
            required,
            "upgrade: " + _recommended(matrix),
        )
    verdict = WARN_STATUSES.get(level.status, level.status)
    lagging = ", ".join(_lagging(row, stack))
    return CheckResult(
        "version-matrix",
        Status.WARN,
        f"cluster only meets the {level.version} row ({verdict}): {lagging}",
        required,
        "upgrade CUDA driver, GPU operator and Kubernetes to the engine's row together: "
        + _recommended(matrix),
    )


def _lagging(row: EngineRow, stack: StackVersions) -> list[str]:
    parts = [("CUDA", stack.cuda, row.cuda), ("Kubernetes", stack.kubernetes, row.kubernetes_min)]
    parts.append(("GPU operator", stack.gpu_operator, row.gpu_operator_min))
    return [
        f"{name} {format_version(found)} < {wanted}"
        for name, found, wanted in parts
        if found is not None and not version_at_least(found, wanted)
    ]


def _recommended(matrix: Matrix) -> str:
    row = next(r for r in matrix.rows if r.status == "recommended")
    return f"CUDA {row.cuda}, Kubernetes {row.kubernetes_min}+, GPU operator {row.gpu_operator_min}+ (engine {row.version})"


def python_in_range(found: tuple[int, ...], bounds: tuple[str, str]) -> bool:
    low, high = parse_version(bounds[0]), parse_version(bounds[1])
    assert low is not None and high is not None, "matrix python bounds are versions"
    return low <= found[: len(low)] and found[: len(high)] <= high
