"""Processes of the local stack test: a real `pagedserve serve`, a real Prometheus scraping it, a load generator.

kube-state-metrics cannot run without a Kubernetes API server, so `StaticMetricsServer` stands in for it: it
serves the one KSM series the NoReadyReplicas alert reads. Everything else is the real thing.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deploy.nginx_proxy import free_port
from tests.http_ready import wait_http_ready

PAGEDSERVE = Path(sys.executable).with_name("pagedserve")
SCRAPE_INTERVAL = "1s"
# Labels the chart's ServiceMonitor puts on every series of a pod; the alerts and the adapter select on them.
TARGET_LABELS = {"namespace": "llm", "service": "pagedserve", "pod": "pagedserve-0", "job": "pagedserve"}


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(workdir: Path, extra_args: list[str]) -> Iterator[int]:
    port = free_port()
    log = workdir / "server.log"
    # Host and port last: argparse keeps the last value, so they win over the ones in `extra_args`.
    command = [str(PAGEDSERVE), "serve", *extra_args, "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_http_ready(
            process,
            f"http://127.0.0.1:{port}/ready",
            lambda: log.read_text()[-4000:],
            "pagedserve serve",
            300,
        )
        yield port
    finally:
        stop(process)


class _StaticMetricsHandler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        return


@contextmanager
def static_metrics_server(text: str) -> Iterator[int]:
    handler = type("Handler", (_StaticMetricsHandler,), {"body": text.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_prometheus(
    binary: Path, workdir: Path, server_port: int, ksm_port: int, rules: dict[str, Any]
) -> Iterator[str]:
    """Prometheus on loopback scraping the server (with ServiceMonitor-like labels) and evaluating `rules`."""
    port = free_port()
    rules_file = workdir / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules, sort_keys=False, width=10_000))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                "job_name": "pagedserve",
                "static_configs": [{"targets": [f"127.0.0.1:{server_port}"], "labels": TARGET_LABELS}],
            },
            {
                "job_name": "kube-state-metrics",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{ksm_port}"]}],
            },
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    command = [
        str(binary),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_http_ready(
            process, f"http://127.0.0.1:{port}/-/ready", lambda: log.read_text()[-4000:], "prometheus", 60
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def instant_query(prometheus: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": query}
    if at is not None:
        params["time"] = at
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=30)
    body = response.json()
    if response.status_code != 200 or body["status"] != "success":
        raise AssertionError(f"Prometheus rejected {query!r}: {body}")
    return body["data"]["result"]


def sample_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class LoadResult:
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def _one_client(base: str, model: str, index: int, stop_at: float, result: LoadResult) -> None:
    # A shared system prompt gives the prefix cache something to hit; streaming exercises TTFT and ITL.
    messages = [
        {"role": "system", "content": "You are a terse assistant for a load test. Answer in one sentence."},
        {"role": "user", "content": f"Name a colour and a number; request {index}."},
    ]
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        while time.monotonic() < stop_at:
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": 24,
                "stream": True,
                "ignore_eos": True,
            }
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    pass
                result.count(response.status_code)
            if response.status_code != 200:
                await asyncio.sleep(0.5)  # rejected: back off instead of spinning on 503s


async def _bad_requests(base: str, result: LoadResult) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(3):
            response = await client.post("/v1/completions", json={"model": "no-such-model", "prompt": "x"})
            result.count(response.status_code)


def run_load(port: int, model: str, clients: int, seconds: float) -> LoadResult:
    """`clients` concurrent streaming chat clients for `seconds`, plus a few 4xx requests."""
    base = f"http://127.0.0.1:{port}"
    result = LoadResult()
    stop_at = time.monotonic() + seconds

    async def main() -> None:
        await asyncio.gather(
            _bad_requests(base, result),
            *(_one_client(base, model, i, stop_at, result) for i in range(clients)),
        )

    asyncio.run(main())
    return result
