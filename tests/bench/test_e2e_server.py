"""`pagedserve bench` end to end: a real `pagedserve serve` subprocess (bundled model), the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.bench_stub import VLLM_RESULT_KEYS, assert_png_drawn
from tests.http_ready import wait_http_ready

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.model]

CLI = [sys.executable, "-m", "pagedserve.cli.main"]
STARTUP_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(process, url + "/v1/models", lambda: log_path.read_text()[-3000:], "pagedserve serve",
                        STARTUP_TIMEOUT_S)  # fmt: skip
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "bench", *args], capture_output=True, text=True, timeout=600)


def test_bench_serve_result_file_and_plot(server_url: str, tmp_path: Path) -> None:
    result_path, plot_path = tmp_path / "result.json", tmp_path / "serve.png"
    done = _bench(
        "serve", "--base-url", server_url, "--num-prompts", "4", "--input-len", "32", "--output-len", "8",
        "--max-concurrency", "2", "--ignore-eos", "--goodput", "ttft:60000", "tpot:60000",
        "--result-json", str(result_path), "--plot", str(plot_path), "--disable-tqdm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Serving Benchmark Result" in done.stdout
    result = json.loads(result_path.read_text())
    missing = [key for key in VLLM_RESULT_KEYS if key not in result]
    assert not missing, missing
    assert (result["completed"], result["failed"]) == (4, 0), result["failure_reasons"]
    assert result["total_output_tokens"] == 32  # ignore_eos: exactly 8 each
    assert result["output_len_source"] == "usage"  # the server sent the usage chunk we asked for
    assert result["total_input_tokens"] == 4 * 32
    assert result["mean_ttft_ms"] > 0 and result["mean_tpot_ms"] > 0 and result["mean_itl_ms"] > 0
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert_png_drawn(plot_path)


def test_bench_serve_chat_endpoint(server_url: str, tmp_path: Path) -> None:
    result_path = tmp_path / "chat.json"
    done = _bench(
        "serve", "--base-url", server_url, "--endpoint", "/v1/chat/completions", "--dataset", "topics",
        "--num-prompts", "2", "--output-len", "6", "--ignore-eos", "--result-json", str(result_path),
        "--disable-tqdm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert (result["completed"], result["failed"], result["total_output_tokens"]) == (2, 0, 12)
    assert all(text for text in result["generated_texts"])


def test_bench_sweep(server_url: str, tmp_path: Path) -> None:
    result_path, plot_path = tmp_path / "sweep.json", tmp_path / "sweep.png"
    done = _bench(
        "sweep", "--base-url", server_url, "--concurrency", "1,2", "--num-prompts", "4", "--min-prompts", "2",
        "--prompts-per-concurrency", "2", "--input-len", "16", "--output-len", "4", "--ignore-eos",
        "--slo", "p99_ttft_ms:60000", "--result-json", str(result_path), "--plot", str(plot_path),
        "--disable-tqdm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = json.loads(result_path.read_text())
    assert [(r["concurrency"], r["completed"], r["failed"]) for r in sweep["rows"]] == [(1, 2, 0), (2, 4, 0)]
    assert sweep["capacity"] == 2
    assert_png_drawn(plot_path)
