"""A private Docker engine and a locally made base image, for tests that build and run the real images.

No image registry is reachable here, so the base image is made with Debian's debootstrap (bookworm, the
python3 the images need) and imported; its root filesystem tarball is cached in TOOLS_DIR
(tests/deploy/tools.py) across runs and clones. dockerd (Debian's docker.io) runs per test session with its own
data and exec roots and socket, without iptables or a bridge (containers use the host network), and is stopped with everything it started when the
session ends. Installs go through `tools._ensure_debian_binary` (apt-get; a failure fails the test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.tools import TOOLS_DIR, ToolInstallError, _ensure_debian_binary, _install_lock

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What both image stages need from the base: python3 with venv (the build stage adds gcc itself), tini and the
# OpenMP runtime for the runtime stage.
BASE_PACKAGES = ("python3", "python3-venv", "tini", "libgomp1", "ca-certificates")
BASE_IMAGE = "pagedserve-test/bookworm-python:1"


@dataclass
class Docker:
    """A running private dockerd: `run(...)` calls the docker CLI against it."""

    socket: Path
    cli: Path

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        result = subprocess.run(
            [str(self.cli), *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}... failed: {result.stderr[-3000:]}")
        return result


def _debian_tool(binary: str, package: str) -> Path:
    return _ensure_debian_binary(binary, package, ("/usr/sbin", "/usr/bin", "/sbin"))


@contextmanager
def private_dockerd() -> Iterator[Docker]:
    """dockerd on a socket of its own (data under a temporary folder), stopped and removed on exit."""
    dockerd = _debian_tool("dockerd", "docker.io")
    cli = Path(shutil.which("docker") or "/usr/bin/docker")
    if not cli.exists():
        raise ToolInstallError("docker.io is installed but no docker CLI is on PATH")
    # A short root: the engine's unix sockets live under it and their paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="psd-", dir="/tmp"))
    socket = root / "docker.sock"
    log = open(root / "dockerd.log", "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [str(dockerd), "--iptables=false", "--bridge=none", "--data-root", str(root / "data"),
         "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"), "-H", f"unix://{socket}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        docker = Docker(socket, cli)
        deadline = time.monotonic() + 60
        while docker.run("version", check=False, timeout=30).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {(root / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield docker
    finally:
        # Containers first (the daemon would stop them too, more slowly), then the daemon and its containerd.
        if socket.exists():
            ids = Docker(socket, cli).run("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                Docker(socket, cli).run("rm", "-f", *ids, check=False, timeout=120)
        with _ignore_missing():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with _ignore_missing():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """dockerd leaves its network namespace (and, if killed, overlay mounts) mounted under its roots."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


@contextmanager
def _ignore_missing() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


def base_rootfs_tarball() -> Path:
    """The base image's root filesystem as a tarball, made once with debootstrap and cached in TOOLS_DIR."""
    name = f"debootstrap-{DEBIAN_SUITE}-{'-'.join(BASE_PACKAGES)}.tar"
    tarball = TOOLS_DIR / name
    with _install_lock("debootstrap-base"):
        if tarball.exists():
            return tarball
        debootstrap = _debian_tool("debootstrap", "debootstrap")
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=TOOLS_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs"
            command = [str(debootstrap), "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                       DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
            if result.returncode != 0:
                raise ToolInstallError(f"debootstrap failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")
            partial = Path(tmp) / name
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
            os.replace(partial, tarball)
    return tarball


def import_base_image(docker: Docker) -> str:
    tarball = base_rootfs_tarball()
    docker.run("import", str(tarball), BASE_IMAGE, timeout=600)
    return BASE_IMAGE
