"""A stand-in Kubernetes API server for the few calls `ray-pipeline submit` and `status` make.

There is no Kubernetes API server (and no KubeRay operator) where these tests run, so this one
answers over real HTTP: the real kubernetes client sends real requests and parses real
responses (objects, Status errors, a plain-text 404 for an API group that is not served), and
a RayJob's status advances through a script, the way the operator would move it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class FakeCluster:
    namespaces: set[str] = field(default_factory=lambda: {"ml"})
    kuberay: bool = True  # are the ray.io/v1 CRDs installed?
    forbidden: bool = False  # does every request get 403?
    rayclusters: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    # The statuses a new RayJob goes through, one per GET; the last one stays.
    statuses: list[dict[str, Any]] = field(default_factory=list)
    rayjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # The API server's Service proxy: "<namespace>/<service>:<port>" -> the URL it forwards to
    # (a real local Ray dashboard in the deadline tests), and the headers each proxied call had.
    services: dict[str, str] = field(default_factory=dict)
    proxied: list[dict[str, str]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _reads: dict[tuple[str, str], int] = field(default_factory=dict)

    def rayjob_status(self, key: tuple[str, str]) -> dict[str, Any] | None:
        if not self.statuses:
            return None
        n = self._reads.get(key, 0)
        self._reads[key] = n + 1
        return self.statuses[min(n, len(self.statuses) - 1)]


def _status(code: int, message: str, reason: str) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }  # fmt: skip


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header(
            "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> tuple[int, Any]:
        c = self.cluster
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        c.requests.append((method, path))
        if c.forbidden:
            return 403, _status(403, f'{path} is forbidden: User "dev" cannot get it', "Forbidden")
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/services/([^/]+)/proxy(/.*)?", path):
            return self._proxy(
                f"{m[1]}/{m[2]}", (m[3] or "/") + (f"?{url.query}" if url.query else "")
            )
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)", path):
            if m[1] in c.namespaces:
                return 200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": m[1]}}
            return 404, _status(404, f'namespaces "{m[1]}" not found', "NotFound")
        if path.startswith("/apis/ray.io/") and not c.kuberay:
            return 404, "404 page not found\n"
        if path == "/apis/ray.io/v1":
            resources = [
                {"name": plural, "singularName": plural[:-1], "namespaced": True, "kind": kind,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for plural, kind in (("rayclusters", "RayCluster"), ("rayjobs", "RayJob"))
            ]  # fmt: skip
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "ray.io/v1",
                "resources": resources,
            }
        m = re.fullmatch(r"/apis?/(?:ray\.io/)?v1/namespaces/([^/]+)/(\w+)(?:/([^/]+))?", path)
        if not m:
            return 404, "404 page not found\n"
        namespace, plural, name = m[1], m[2], m[3]
        if namespace not in c.namespaces:
            return 404, _status(404, f'namespaces "{namespace}" not found', "NotFound")
        stored = {"rayclusters": c.rayclusters, "configmaps": c.configmaps}.get(plural)
        if plural == "rayjobs":
            key = (namespace, name or "")
            if method == "POST":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = (namespace, body["metadata"]["name"])
                if key in c.rayjobs:
                    return 409, _status(409, "already exists", "AlreadyExists")
                c.rayjobs[key] = body
                return 201, body
            if key not in c.rayjobs:
                return 404, _status(404, f'rayjobs.ray.io "{name}" not found', "NotFound")
            obj = dict(c.rayjobs[key])
            status = c.rayjob_status(key)
            if status is not None:
                obj["status"] = status
            return 200, obj
        if stored is None:
            return 404, "404 page not found\n"
        found = [o for o in stored if o["metadata"].get("namespace", namespace) == namespace]
        if name is None:
            selector = query.get("labelSelector", [""])[0]
            items = [o for o in found if _matches(o["metadata"].get("labels") or {}, selector)]
            return 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
        for obj in found:
            if obj["metadata"]["name"] == name:
                return 200, obj
        return 404, _status(404, f'{plural} "{name}" not found', "NotFound")

    def _proxy(self, service: str, rest: str) -> tuple[int, Any]:
        """Forward to the service as kube-apiserver does: the caller's Authorization header is
        consumed by the API server's authentication and not passed on; the rest is."""
        import urllib.error
        import urllib.request

        upstream = self.cluster.services.get(service)
        if upstream is None:
            return 503, _status(503, f'no endpoints available for service "{service}"', "")
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "authorization", "content-length")
        }
        self.cluster.proxied.append(dict(self.headers.items()))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(
            upstream + rest, data=body, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def do_GET(self) -> None:  # noqa: N802
        self._send(*self._route("GET"))

    def do_POST(self) -> None:  # noqa: N802
        self._send(*self._route("POST"))


class FakeApiServer:
    """`with FakeApiServer(cluster, tmp_path) as kubeconfig:` serves `cluster` over HTTP."""

    def __init__(self, cluster: FakeCluster, directory: Path):
        self.cluster = cluster
        handler = type("Handler", (_Handler,), {"cluster": cluster})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kubeconfig = write_kubeconfig(directory / "kubeconfig", self.url)

    def __enter__(self) -> Path:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self.kubeconfig

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, server: str, namespace: str = "ml") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "dev", "user": {"token": "not-a-real-token"}}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "dev", "namespace": namespace}}
        ],
        "current-context": "test",
    }
    path.write_text(json.dumps(config))
    return path
