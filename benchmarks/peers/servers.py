"""Starting and stopping the servers compared in `make bench`: pagedserve, upstream vLLM and llama.cpp.

Each runs as a child process on a free loopback port with its log in the results folder; `ready()` waits for
its `/v1/models`. A server that can't be started is reported by the caller as missing, with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEERS_VENV = REPO / ".venv-peers"
CACHE = REPO / ".bench-cache"
LLAMA_SERVER = CACHE / "llama-server"
HF_FOLDER = CACHE / "smollm2-135m-instruct-hf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerSpec:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 600.0


def pagedserve_spec(python: str, port: int, *flags: str, dtype: str = "bfloat16") -> ServerSpec:
    command = [python, "-m", "pagedserve.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return ServerSpec("pagedserve", command + ["--dtype", dtype, *flags])


def vllm_spec(port: int, kv_cache_gib: int = 4) -> ServerSpec:
    command = [
        str(PEERS_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(HF_FOLDER),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "2048",
    ]  # fmt: skip
    return ServerSpec("vLLM (CPU)", command, {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)})


def llamacpp_spec(gguf: Path, port: int, slots: int = 32) -> ServerSpec:
    # -c is the whole context, split across the slots: 512 tokens each fits the 128 + 128 workloads.
    command = [
        str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
        "-c", str(512 * slots), "-t", str(os.cpu_count() or 2),
    ]  # fmt: skip
    return ServerSpec("llama.cpp", command)


def missing_reason(name: str) -> str | None:
    """Why a peer can't run here (None when it can)."""
    if name == "vllm":
        if not (PEERS_VENV / ".vllm-installed").exists():
            return "vllm-cpu is not installed in .venv-peers (benchmarks/peers/setup_vllm.sh failed or was not run)"
        if not (HF_FOLDER / ".complete").exists():
            return "no Hugging Face folder of the bundled model (benchmarks/peers/make_hf_folder.py failed)"
    if name == "llamacpp" and not LLAMA_SERVER.exists():
        return "llama-server is not built (benchmarks/peers/setup_llamacpp.sh failed or was not run)"
    return None


class RunningServer:
    def __init__(self, spec: ServerSpec, port: int, log_path: Path) -> None:
        self.spec = spec
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            spec.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            start_new_session=True,  # its own process group: stop() ends the server and its workers, nothing else
        )

    def ready(self) -> None:
        """Wait for `/v1/models`; RuntimeError with the log's tail if the server dies or takes too long."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(
            f"{self.spec.name} not ready after {self.spec.startup_timeout_s:.0f}s: {self.log_tail()}"
        )

    def log_tail(self, chars: int = 300) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:].strip().replace("\n", " | ")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
