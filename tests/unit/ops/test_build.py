"""The kernel build: one library per ISA level with explicit flags, named by level and sources only, so one cache
folder serves every kind of host; stale builds are pruned."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from pagedserve.cpu_info import ISA_LEVELS
from pagedserve.ops import build

X86 = platform.machine() in ("x86_64", "AMD64")


def test_levels_use_explicit_flags_never_native():
    for level in ISA_LEVELS if X86 else ["portable"]:
        flags = build.level_flags(level)
        assert not any("native" in flag for flag in flags)
    if X86:
        assert "-mavx2" in build.level_flags("avx2") and "-mavx512f" not in build.level_flags("avx2")
        assert "-mavx512bf16" in build.level_flags("avx512_bf16")
    with pytest.raises(ValueError, match="ISA level"):
        build.level_flags("sse9")


@pytest.mark.skipif(not X86, reason="the SIMD levels are x86; other CPUs build only the portable level")
def test_every_level_builds_into_one_folder_and_stale_builds_go(tmp_path):
    folder = tmp_path / "kernels"
    folder.mkdir()
    stale_same_level = folder / "pagedserve_ops_avx2_0123456789abcdef.so"
    stale_pre_level = folder / "pagedserve_ops_fedcba9876543210.so"
    other_file = folder / "notes.txt"
    for path in (stale_same_level, stale_pre_level, other_file):
        path.write_text("x")
    env_run = subprocess.run(
        [sys.executable, "-m", "pagedserve.ops.build"],
        capture_output=True, text=True, timeout=300, env={"PAGEDSERVE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    built = sorted(p.name for p in folder.glob("pagedserve_ops_*.so"))
    assert len(built) == len(ISA_LEVELS) and all(any(f"_{lv}_" in n for n in built) for lv in ISA_LEVELS)
    assert not stale_same_level.exists() and not stale_pre_level.exists() and other_file.exists()


def test_prebuilt_folder_serves_a_host_without_a_compiler(tmp_path):
    """An image builds every level into a folder (--out) in its build stage; its runtime stage has no compiler and
    loads from PAGEDSERVE_KERNEL_DIR, writing nothing to its cache."""
    prebuilt = tmp_path / "prebuilt"
    env = {"PAGEDSERVE_CACHE_DIR": str(tmp_path / "build-cache"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "pagedserve.ops.build", "--levels", "portable", "--out", str(prebuilt)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    [library] = prebuilt.glob("pagedserve_ops_portable_*.so")
    probe = (
        "from pagedserve.ops import build; lib = build.use_level('portable'); "
        "print('loaded' if lib is not None else 'none')"
    )
    run_cache = tmp_path / "run-cache"
    env = {"PAGEDSERVE_CACHE_DIR": str(run_cache), "PAGEDSERVE_KERNEL_DIR": str(prebuilt), "CC": "/nonexistent/cc",
           "PATH": "/nonexistent"}  # fmt: skip
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert loaded.stdout.strip() == "loaded", loaded.stderr[-2000:]
    assert not list(run_cache.rglob("*.so")), "nothing is compiled when the prebuilt folder holds the level"
    env.pop("PAGEDSERVE_KERNEL_DIR")
    missing = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert missing.stdout.strip() == "none", "without the folder and without a compiler there are no kernels"
