"""The default thread count follows the cgroup CPU quota (Kubernetes' limits.cpu), not just the affinity mask.

Fake cgroup trees check the parsing of cgroup v1 and v2 layouts; one test makes a real cgroup with a quota (root,
a writable cgroup mount) and runs a process in it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pagedserve.cpu_quota import cgroup_cpu_quota


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_v2_takes_the_tightest_limit_along_the_path(tmp_path: Path) -> None:
    _write(tmp_path, cpu_max="max 100000")
    _write(tmp_path / "kubepods" / "pod1", cpu_max="250000 100000")  # the pod's limit
    _write(tmp_path / "kubepods" / "pod1" / "ctr", cpu_max="max 100000")
    assert cgroup_cpu_quota("0::/kubepods/pod1/ctr", tmp_path) == 2.5


def test_v2_inside_a_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    _write(tmp_path, cpu_max="400000 100000")
    assert cgroup_cpu_quota("0::/", tmp_path) == 4.0
    # The host path the kernel names is not under the container's mount: the mount root is the container.
    assert cgroup_cpu_quota("0::/kubepods/burstable/pod9/abc", tmp_path) == 4.0


def test_v1_cpu_controller(tmp_path: Path) -> None:
    proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/"
    _write(tmp_path / "cpu,cpuacct" / "docker" / "abc", cpu_cfs_quota_us="150000", cpu_cfs_period_us="100000")
    assert cgroup_cpu_quota(proc, tmp_path) == 1.5
    _write(tmp_path / "cpu,cpuacct" / "docker" / "abc", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    assert cgroup_cpu_quota(proc, tmp_path) is None


def test_no_quota_anywhere_is_none(tmp_path: Path) -> None:
    _write(tmp_path, cpu_max="max 100000")
    assert cgroup_cpu_quota("0::/", tmp_path) is None
    assert cgroup_cpu_quota("", tmp_path) is None
    assert cgroup_cpu_quota("0::/", tmp_path / "absent") is None


def _real_cgroup_with_quota(cpus: float) -> tuple[Path, Path]:
    """A real cgroup limited to `cpus` CPUs: (folder, file a pid is written to). v1 cpu controller or v2."""
    name = f"pagedserve-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        folder = v1 / name
        folder.mkdir()
        (folder / "cpu.cfs_period_us").write_text("100000")
        (folder / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
        return folder, folder / "cgroup.procs"
    v2 = Path("/sys/fs/cgroup")
    if "cpu" in (v2 / "cgroup.controllers").read_text().split():
        folder = v2 / name
        folder.mkdir()
        (folder / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
        return folder, folder / "cgroup.procs"
    raise OSError("no cgroup cpu controller is mounted writable")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a cgroup needs root")
def test_the_engine_runs_as_many_threads_as_a_real_cgroup_quota_allows() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 CPUs in the affinity mask to see the cap")
    try:
        folder, procs = _real_cgroup_with_quota(1.5)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        code = (
            "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()));"
            "from pagedserve.worker.device import configure_cpu_threads; import torch;"
            "print(configure_cpu_threads(None), torch.get_num_threads())"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(procs)], capture_output=True, text=True, timeout=120, check=True
        )
        assert done.stdout.split() == ["1", "1"]  # 1.5 CPUs rounds down to 1 thread, on a 2-CPU host
    finally:
        folder.rmdir()
