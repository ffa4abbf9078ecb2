"""`pagedserve preflight --local`: the same requirements checked on a GPU host, from nvidia-smi and df."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.checks_engine import check_engine_values
from pagedserve.kube.checks_nodes import EPHEMERAL_MIN_GB, EPHEMERAL_RECOMMENDED_GB, GB
from pagedserve.kube.compat import (
    ReleaseNeeds,
    StackVersions,
    check_version_matrix,
    python_in_range,
    release_needs,
)
from pagedserve.kube.report import CheckResult, Status
from pagedserve.kube.versions import format_version, parse_version, version_at_least

GPU_QUERY_FIELDS = ("index", "name", "memory.total", "driver_version", "compute_cap")
STORAGE_PATHS = ("/var/lib/kubelet", "/var/lib/containerd", "/")
DRIVER_DOCS = "https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/"


@dataclass(frozen=True)
class LocalGpu:
    index: int
    name: str
    memory_mib: int
    driver_version: str
    compute_capability: str


@dataclass(frozen=True)
class DiskUsage:
    filesystem: str
    mount: str
    size_bytes: int
    available_bytes: int


def parse_gpu_query(text: str) -> list[LocalGpu]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,driver_version[,compute_cap] --format=csv`."""
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if not rows:
        return []
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    if "index" not in header or "memory.total" not in header:
        raise ValueError(f"unexpected nvidia-smi CSV header: {rows[0]}")
    gpus = []
    for row in rows[1:]:
        if not row:
            continue
        fields = dict(zip(header, (cell.strip() for cell in row)))
        memory = re.match(r"(\d+)", fields["memory.total"])
        if memory is None:
            raise ValueError(f"unexpected memory.total {fields['memory.total']!r} in nvidia-smi output")
        gpus.append(
            LocalGpu(
                index=int(fields["index"]),
                name=fields.get("name", "?"),
                memory_mib=int(memory.group(1)),
                driver_version=fields.get("driver_version", "?"),
                compute_capability=fields.get("compute_cap", ""),
            )
        )
    return gpus


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version the driver supports) from plain `nvidia-smi` output."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (driver.group(1) if driver else None, cuda.group(1) if cuda else None)


def parse_df(text: str) -> DiskUsage:
    """Parse `df -Pk PATH` (POSIX format: one line per file system, sizes in 1024-byte blocks)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("Filesystem"):
        raise ValueError(f"unexpected df output: {text.strip()[:200]!r}")
    parts = lines[-1].split()
    if len(parts) < 6:
        raise ValueError(f"unexpected df line: {lines[-1]!r}")
    return DiskUsage(
        filesystem=parts[0],
        mount=" ".join(parts[5:]),
        size_bytes=int(parts[1]) * 1024,
        available_bytes=int(parts[3]) * 1024,
    )


def _run(argv: list[str]) -> tuple[int, str, str] | None:
    """Run a host tool; None when it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def gpu_family(compute_capability: str) -> str | None:
    version = parse_version(compute_capability)
    if not version:
        return None
    major = version[0]
    return "blackwell" if major >= 10 else {9: "hopper", 8: "ampere", 7: "volta"}.get(major)


def check_nvidia(
    needs: DeploymentNeeds, release: ReleaseNeeds
) -> tuple[list[CheckResult], StackVersions | None]:
    required = f"NVIDIA driver with CUDA >= {release.cuda_min} ({release.cuda_recommended}+ recommended)"
    smi = _run(["nvidia-smi"])
    if smi is None:
        seen = (
            "nvidia-smi not found on PATH: this host has no NVIDIA driver installed (or it is not a GPU node)"
        )
        return [CheckResult("nvidia-driver", Status.FAIL, seen, required, DRIVER_DOCS)], None
    rc, out, err = smi
    driver, cuda_text = parse_smi_header(out)
    if rc != 0 or driver is None or cuda_text is None:
        seen = f"nvidia-smi failed (exit {rc}): {(err or out).strip()[:300]}"
        return [CheckResult("nvidia-driver", Status.FAIL, seen, required, DRIVER_DOCS)], None
    cuda = parse_version(cuda_text) or (0,)
    seen = f"driver {driver}, CUDA {cuda_text}"
    if not version_at_least(cuda, release.cuda_min):
        status = Status.FAIL
    else:
        status = Status.PASS if version_at_least(cuda, release.cuda_recommended) else Status.WARN
    results = [CheckResult("nvidia-driver", status, seen, required, DRIVER_DOCS)]

    query = _run(["nvidia-smi", f"--query-gpu={','.join(GPU_QUERY_FIELDS)}", "--format=csv"])
    if query is not None and query[0] != 0:  # drivers before compute_cap was queryable
        query = _run(["nvidia-smi", f"--query-gpu={','.join(GPU_QUERY_FIELDS[:-1])}", "--format=csv"])
    gpus = parse_gpu_query(query[1]) if query and query[0] == 0 else []
    tp = needs.tensor_parallel_size
    gpu_required = f">= {tp} GPU(s) (engine.tensorParallelSize)"
    listing = "; ".join(f"{g.index}: {g.name} {g.memory_mib} MiB" for g in gpus) or "no GPUs listed"
    results.append(
        CheckResult(
            "gpus",
            Status.PASS if len(gpus) >= tp else Status.FAIL,
            listing,
            gpu_required,
            "pagedserve plan MODEL --gpu ... shows the GPUs a model needs",
        )
    )
    families = frozenset(f for f in (gpu_family(g.compute_capability) for g in gpus) if f)
    quantization = (needs.quantization or "none") if needs.known else None
    return results, StackVersions(
        cuda=cuda, kubernetes=None, gpu_operator=None, gpu_families=families, quantization=quantization
    )


def check_disk(path: str | None) -> CheckResult:
    target = path or next(p for p in STORAGE_PATHS if Path(p).exists())
    required = f">= {EPHEMERAL_MIN_GB} GB on the kubelet/containerd disk ({EPHEMERAL_RECOMMENDED_GB} GB+ NVMe recommended)"
    df = _run(["df", "-Pk", target])
    if df is None or df[0] != 0:
        return CheckResult(
            "disk",
            Status.FAIL,
            f"df -Pk {target} failed: {df[2].strip() if df else 'df not found'}",
            required,
        )
    usage = parse_df(df[1])
    seen = (
        f"{usage.mount} ({usage.filesystem}): {usage.size_bytes / GB:.0f} GB, "
        f"{usage.available_bytes / GB:.0f} GB free (checked {target})"
    )
    if usage.size_bytes < EPHEMERAL_MIN_GB * GB:
        status = Status.FAIL
    else:
        status = Status.PASS if usage.size_bytes >= EPHEMERAL_RECOMMENDED_GB * GB else Status.WARN
    return CheckResult("disk", status, seen, required, "grow the disk, or mount NVMe at /var/lib/containerd")


def check_containerd(release: ReleaseNeeds) -> CheckResult:
    required = f"containerd >= {release.containerd_min}"
    found = _run(["containerd", "--version"])
    if found is None:
        return CheckResult(
            "containerd",
            Status.WARN,
            "containerd not on PATH",
            required,
            "on a Kubernetes node: kubectl get node <name> -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'",
        )
    match = re.search(r"\bv?(\d+\.\d+(?:\.\d+)?)", found[1])
    version = parse_version(match.group(1)) if match else None
    if version is None:
        return CheckResult(
            "containerd", Status.WARN, f"cannot read version from {found[1].strip()!r}", required
        )
    ok = version_at_least(version, release.containerd_min)
    return CheckResult(
        "containerd",
        Status.PASS if ok else Status.FAIL,
        f"containerd {format_version(version)}",
        required,
        "upgrade containerd (https://github.com/containerd/containerd/releases)",
    )


def check_python_stack(release: ReleaseNeeds) -> list[CheckResult]:
    """Python and transformers of this host, for running `pagedserve serve` on it without Kubernetes."""
    found = sys.version_info[:3]
    bounds = release.python
    py_ok = python_in_range(tuple(found), bounds)
    results = [
        CheckResult(
            "python",
            Status.PASS if py_ok else Status.WARN,
            f"Python {format_version(tuple(found))}",
            f"Python {bounds[0]}-{bounds[1]}",
            "use a supported Python for the virtualenv",
        )
    ]
    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = None
    version = parse_version(transformers) if transformers else None
    ok = version is not None and version_at_least(version, release.transformers_min)
    results.append(
        CheckResult(
            "transformers",
            Status.PASS if ok else Status.WARN,
            f"transformers {transformers or 'not installed'}",
            f"transformers >= {release.transformers_min}",
            f"pip install 'transformers>={release.transformers_min}'",
        )
    )
    return results


def run_local_preflight(needs: DeploymentNeeds, storage_path: str | None = None) -> list[CheckResult]:
    release = release_needs()
    results, stack = check_nvidia(needs, release)
    results.insert(0, check_engine_values(needs))
    if stack is not None:
        results.append(check_version_matrix(release.matches_vllm, stack))
    results += [check_containerd(release), check_disk(storage_path), *check_python_stack(release)]
    return results
