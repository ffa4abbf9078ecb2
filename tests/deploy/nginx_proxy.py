"""A real nginx configured with the proxy settings of the chart's Ingress annotations, for streaming tests.

Each ingress-nginx annotation the chart sets maps to the directive ingress-nginx writes for it; an annotation
without a mapping is an error, so a new Ingress setting cannot slip past the streaming test.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.deploy.chart import CI_VALUES_DIR, one, render

ANNOTATION_PREFIX = "nginx.ingress.kubernetes.io/"
ANNOTATION_DIRECTIVES = {
    "proxy-buffering": lambda v: f"proxy_buffering {v};",
    "proxy-request-buffering": lambda v: f"proxy_request_buffering {v};",
    "proxy-http-version": lambda v: f"proxy_http_version {v};",
    "proxy-read-timeout": lambda v: f"proxy_read_timeout {v}s;",
    "proxy-send-timeout": lambda v: f"proxy_send_timeout {v}s;",
    "proxy-body-size": lambda v: f"client_max_body_size {v};",
}


def ingress_annotations() -> dict[str, str]:
    ingress = one(render([CI_VALUES_DIR / "ingress-tls-values.yaml"]), "Ingress")
    return {k: v for k, v in ingress["metadata"]["annotations"].items() if k.startswith(ANNOTATION_PREFIX)}


def proxy_directives(annotations: dict[str, str]) -> list[str]:
    directives = []
    for key, value in annotations.items():
        name = key.removeprefix(ANNOTATION_PREFIX)
        if name not in ANNOTATION_DIRECTIVES:
            raise ValueError(
                f"no nginx directive known for Ingress annotation {key}; add it to ANNOTATION_DIRECTIVES"
            )
        directives.append(ANNOTATION_DIRECTIVES[name](value))
    return directives


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_config(workdir: Path, listen_port: int, upstream_port: int, directives: list[str]) -> str:
    indented = "\n".join(f"      {d}" for d in directives)
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/client_body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  upstream server {{ server 127.0.0.1:{upstream_port}; }}
  server {{
    listen 127.0.0.1:{listen_port};
    location / {{
      proxy_pass http://server;
      proxy_set_header Host $host;
      proxy_set_header Connection "";
      # The server also sends X-Accel-Buffering: no; ignore it so only the Ingress settings are under test.
      proxy_ignore_headers X-Accel-Buffering;
{indented}
    }}
  }}
}}
"""


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def running_nginx(nginx: Path, workdir: Path, upstream_port: int, directives: list[str]) -> Iterator[int]:
    """Start nginx in front of 127.0.0.1:upstream_port; yields the port it listens on."""
    workdir.mkdir(parents=True, exist_ok=True)
    listen_port = free_port()
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(workdir, listen_port, upstream_port, directives))
    check = subprocess.run(
        [str(nginx), "-t", "-p", str(workdir), "-c", str(config)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected its config:\n{check.stderr}\n{config.read_text()}")
    process = subprocess.Popen([str(nginx), "-p", str(workdir), "-c", str(config)])
    try:
        wait_for_port(listen_port, 10, process)
        yield listen_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
