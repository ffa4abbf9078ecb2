"""A real nginx with the Ingress' proxy settings passes a server-sent-event stream through unbuffered.

The upstream here is a small streaming HTTP server in the test (one event every EVENT_GAP seconds, chunked,
without X-Accel-Buffering); test_local_stack.py repeats the check against a real `pagedserve serve`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.deploy.nginx_proxy import ingress_annotations, proxy_directives, running_nginx

pytestmark = [pytest.mark.nginx, pytest.mark.helm]

EVENTS = 6
EVENT_GAP = 0.4


class _SSEHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index in range(EVENTS):
            self._chunk(f'data: {{"index": {index}}}\n\n'.encode())
            time.sleep(EVENT_GAP)
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, payload: bytes) -> None:
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        return


@pytest.fixture()
def sse_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSEHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def event_arrival_times(url: str) -> tuple[list[float], float]:
    """Seconds from request start at which each `data:` event arrived, and when the response ended."""
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    return arrivals, time.monotonic() - started


def test_ingress_annotations_map_to_nginx_directives() -> None:
    directives = proxy_directives(ingress_annotations())
    assert "proxy_buffering off;" in directives
    assert "proxy_request_buffering off;" in directives
    assert "proxy_http_version 1.1;" in directives


def test_stream_passes_unbuffered_through_nginx(nginx_binary: Path, tmp_path: Path, sse_server: int) -> None:
    with running_nginx(
        nginx_binary, tmp_path / "nginx", sse_server, proxy_directives(ingress_annotations())
    ) as port:
        arrivals, ended = event_arrival_times(f"http://127.0.0.1:{port}/stream")
    assert len(arrivals) == EVENTS + 1
    assert ended >= EVENTS * EVENT_GAP * 0.9
    # The first event arrives long before the response ends, and events arrive spread out as they were sent.
    assert arrivals[0] < ended - (EVENTS - 2) * EVENT_GAP, (arrivals, ended)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:EVENTS])]
    assert sum(gap > EVENT_GAP / 2 for gap in gaps) >= EVENTS - 2, (arrivals, ended)
