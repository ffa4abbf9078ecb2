"""Waiting for a process we started to answer HTTP: one loop for every test that launches a server."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_http_ready(
    process: subprocess.Popen[bytes], url: str, log: Callable[[], str], name: str, timeout: float
) -> None:
    """Polls `url` until it answers 200; fails with `log()` if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{name} not ready after {timeout} s:\n{log()}")
