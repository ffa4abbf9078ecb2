"""How many CPUs this process may keep busy: its affinity mask, capped by its cgroup's CPU quota.

A Kubernetes container with `resources.limits.cpu: 4` on a 64-core node sees all 64 cores in its affinity mask,
but the kernel lets it run 4 CPU-seconds a second (CFS quota). One OpenMP thread per visible core then spends most
of every period throttled, each barrier waiting for threads that are not allowed to run. Go (automaxprocs), the JVM
and .NET size their pools from the quota; so does the engine's default thread count. The quota is rounded down (a
limit of 2.5 gives 2 threads): a thread more than the quota is throttled at every step.

Pure Python (no torch). cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) are read along
the process's cgroup path and every ancestor (the tightest limit wins), as /proc/self/cgroup names it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger("pagedserve")

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, relative: str) -> list[Path]:
    """root/a/b/c, root/a/b, root/a, root: the cgroup and every parent that the mount shows."""
    parts = [p for p in relative.strip("/").split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if not quota or not period or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def cgroup_cpu_quota(proc_cgroup: str, root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time a second the cgroup lets this process use; None: no quota.

    `proc_cgroup` is /proc/self/cgroup's text. Inside a container whose cgroup namespace hides the host path, the
    named path does not exist under the mount and the mount's own root is the container's cgroup."""
    limits: list[float] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2
            folders, quota = _ancestors(root, path), _v2_quota
        elif "cpu" in controllers.split(","):  # cgroup v1, mounted as cpu,cpuacct (or cpu)
            mount = next(
                (root / name for name in (controllers, "cpu,cpuacct", "cpu") if (root / name).is_dir()), None
            )
            if mount is None:
                continue
            folders, quota = _ancestors(mount, path), _v1_quota
        else:
            continue
        if not folders[0].is_dir():
            folders = [folders[-1]]
        limits += [q for q in map(quota, folders) if q is not None]
    return min(limits) if limits else None


def usable_cpus() -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota rounded down; at least 1."""
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(_read(Path("/proc/self/cgroup")) or "")
    if quota is None or quota >= visible:
        return visible
    usable = max(1, math.floor(quota))
    logger.info(
        "%d of the %d CPUs in the affinity mask usable: cgroup CPU quota %.2f", usable, visible, quota
    )
    return usable
