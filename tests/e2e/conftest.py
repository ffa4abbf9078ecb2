"""Real `pagedserve serve` subprocesses on free ports with the bundled model.

`server` is one session-wide server shared by every test that can share it; tests that stop, break or
overload a server start their own short-lived one with `start_server`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_ready import wait_http_ready

MAX_MODEL_LEN = 2048
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
# Small enough to start fast on a CPU: ~23 KiB of bf16 KV per token, so 256 MiB hold ~11k tokens.
BASE_ARGS = [
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--kv-cache-memory-bytes",
    "256MiB",
    "--uvicorn-log-level",
    "warning",
]
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_http_ready(self.process, f"{self.url}/ready", lambda: self.log()[-3000:], "server", timeout)

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.log()[-3000:]}") from None


def _terminate_with_pytest() -> None:
    """In the server's process before it runs: SIGTERM to it when pytest dies, however pytest dies (a test run
    killed by hand or by CI's timeout left its servers and their engine cores running)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(tmp_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "pagedserve.cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PAGEDSERVE_INJECT")}
    environment.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *BASE_ARGS, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            preexec_fn=_terminate_with_pytest,
        )
    return ServerProcess(process, port, log_path)


def served_chat(server: ServerProcess, content: str, max_tokens: int = 16):
    """One greedy chat completion of the served model (its name from /v1/models) through the openai SDK."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    [model] = client.models.list().data
    return client.chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=max_tokens
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: 4 sequences per step so that 'waiting' moves under a modest load."""
    process = launch(tmp_path_factory.mktemp("server"), "--max-num-seqs", "4")
    try:
        process.wait_ready()
        yield process
    finally:
        process.terminate()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a dedicated server (killed at the end of the test if it is still running)."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        process = launch(tmp_path, *args, env=env)
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def metric_value(server: ServerProcess, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_aborted_and_idle(server: ServerProcess, aborts_before: float, aborted: int) -> None:
    """After a storm of cut streams: every KV block returns within 10 s, nothing runs, each cut is one abort."""
    deadline = time.monotonic() + 10
    while metric_value(server, "vllm:kv_cache_usage_perc") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric_value(server, "vllm:kv_cache_usage_perc") == 0
    assert metric_value(server, "vllm:num_requests_running") == 0
    assert (
        metric_value(server, "vllm:request_success_total", finished_reason="abort") - aborts_before == aborted
    )


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> Any:
    """The official openai SDK client on the session's server (no retries: a failure shows)."""
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def watch_health(server: ServerProcess) -> tuple[threading.Thread, list[int]]:
    """Polls /health until the server exits (a dying server exits 2 s after its engine): (started thread, codes)."""
    codes: list[int] = []

    def watch() -> None:
        while server.process.poll() is None:
            try:
                codes.append(httpx.get(f"{server.url}/health", timeout=5).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread, codes


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, grandchildren...), from one `ps` snapshot."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(v) for v in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def all_gone(pids: list[int], timeout: float) -> bool:
    """Whether every pid has left /proc within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False
