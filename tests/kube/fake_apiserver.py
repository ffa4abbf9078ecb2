"""A loopback HTTP server that stands in for a Kubernetes API server in the preflight tests.

No API server can run on our machines, so this serves recorded API objects (tests/kube/fixtures/), shaped as
the API server returns them, to the real `kubernetes` client: GETs only, bearer-token auth, equality label
selectors on lists, and `Status` bodies for 401/403/404 like the real server. Everything else in the path
(kubeconfig loading, the client, HTTP) is real.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "preflight-test-token"
SECRETS_PATH = "/api/v1/namespaces/gpu-operator/secrets"


def encode_helm_release(release: dict[str, Any]) -> str:
    """What the API returns in a Helm release Secret's data.release: base64 (Secret) of base64(gzip(JSON)) (Helm)."""
    helm_encoded = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return base64.b64encode(helm_encoded).decode()


def helm_release_secret(release: dict[str, Any]) -> dict[str, Any]:
    name, revision = release["name"], release["version"]
    return {
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v{revision}",
            "namespace": release["namespace"],
            "uid": f"5e7a1c2d-0000-4b3c-8d9e-{revision:012d}",
            "resourceVersion": f"7700{revision}",
            "creationTimestamp": release["info"]["last_deployed"],
            "labels": {
                "modifiedAt": "1725264861",
                "name": name,
                "owner": "helm",
                "status": release["info"]["status"],
                "version": str(revision),
            },
        },
        "type": "helm.sh/release.v1",
        "data": {"release": encode_helm_release(release)},
    }


def healthy_cluster() -> dict[str, Any]:
    """Path -> API object of a healthy GPU cluster (A100 and H100 nodes, GPU operator v24.3.0, adapter, CRDs)."""
    objects = json.loads((FIXTURES / "healthy_cluster.json").read_text())
    releases = json.loads((FIXTURES / "gpu_operator_releases.json").read_text())["releases"]
    other_secret = {
        "metadata": {
            "name": "nvidia-registry-token",
            "namespace": "gpu-operator",
            "uid": "5e7a1c2d-0000-4b3c-8d9e-999999999999",
            "resourceVersion": "77009",
            "creationTimestamp": "2024-03-11T09:10:02Z",
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(b'{"auths":{}}').decode()},
    }
    objects[SECRETS_PATH] = {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "884534"},
        "items": [*(helm_release_secret(r) for r in releases), other_secret],
    }
    return objects


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value.lstrip("="):
            return False
    return True


class FakeApiServer:
    def __init__(self, objects: dict[str, Any], forbidden: set[str] | None = None) -> None:
        self.objects = copy.deepcopy(objects)
        self.forbidden = forbidden or set()
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                return

            def _send(self, code: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                url = url._replace(path=url.path.rstrip("/") or "/")  # the client asks for /version/
                server.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
                    return
                if url.path in server.forbidden:
                    resource = url.path.rstrip("/").rsplit("/", 1)[-1]
                    message = (
                        f'{resource} is forbidden: User "system:serviceaccount:ci:preflight" cannot list '
                        f'resource "{resource}" in API group "" at the cluster scope'
                    )
                    self._send(403, status_body(403, "Forbidden", message))
                    return
                found = server.objects.get(url.path)
                if found is None:
                    name = url.path.rsplit("/", 1)[-1]
                    self._send(404, status_body(404, "NotFound", f'"{name}" not found'))
                    return
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                if selector and "items" in found:
                    found = {
                        **found,
                        "items": [
                            i for i in found["items"] if _matches(i["metadata"].get("labels") or {}, selector)
                        ],
                    }
                self._send(200, found)

            def do_POST(self) -> None:
                self._send(405, status_body(405, "MethodNotAllowed", "preflight must only read"))

            do_PUT = do_PATCH = do_DELETE = do_POST

        return Handler

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_kubeconfig(path: Path, server_url: str, token: str = TOKEN) -> Path:
    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: fake\n  cluster:\n    server: {server_url}\n"
        "users:\n"
        f"- name: tester\n  user:\n    token: {token}\n"
        "contexts:\n"
        "- name: fake\n  context:\n    cluster: fake\n    user: tester\n"
        "current-context: fake\n"
    )
    return path


@contextmanager
def running(objects: dict[str, Any], forbidden: set[str] | None = None) -> Iterator[FakeApiServer]:
    server = FakeApiServer(objects, forbidden).start()
    try:
        yield server
    finally:
        server.stop()
