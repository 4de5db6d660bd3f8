"""A small in-memory HTTP server that speaks the part of the Hub API that publishing and downloading use.

It lets the tests run huggingface_hub's real push and download code over real HTTP (base URL through
`HF_ENDPOINT`): create-repo, validate-yaml, preupload, commit (newline-delimited JSON), model info, and
`resolve` for HEAD/GET of files. Every request is recorded with its Authorization header so tests can check
that the token was sent to the server and nowhere else. Run it standalone with `python tests/hub_server.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

DEFAULT_USER = "test-user"


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    body: bytes


class FakeHub:
    """State of the fake Hub plus the server thread; use as a context manager."""

    def __init__(self, token: str | None = None, user: str = DEFAULT_USER) -> None:
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = unquote(urlparse(self.path).path)
        with self.fake.lock:
            self.fake.requests.append(RecordedRequest(method, path, self.headers.get("Authorization"), body))
        for verb, pattern, name in _ROUTES:
            match = pattern.match(path)
            if verb == method and match:
                getattr(self, name)(body=body, **{k: v for k, v in match.groupdict().items() if v is not None})
                return
        self._json(404, {"error": f"no route for {method} {path}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        expected = self.fake.token
        if expected is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {expected}":
            return True
        self._json(
            401, {"error": "Invalid credentials in Authorization header"}, {"X-Error-Code": "InvalidCredentials"}
        )
        return False

    def _repo(self, repo: str) -> Repo | None:
        found = self.fake.repos.get(repo)
        if found is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return found

    # -- routes --------------------------------------------------------------------------------------------------
    def whoami(self, body: bytes) -> None:
        if self._authorized():
            self._json(200, {"type": "user", "name": self.fake.user, "orgs": []})

    def create_repo(self, body: bytes) -> None:
        if not self._authorized():
            return
        payload = json.loads(body or b"{}")
        repo_id = f"{payload.get('organization') or self.fake.user}/{payload['name']}"
        url = f"{self.fake.url}/{repo_id}"
        with self.fake.lock:
            if repo_id in self.fake.repos:
                self._json(409, {"error": "You already created this model repo", "url": url})
                return
            self.fake.repos[repo_id] = Repo(repo_id, private=bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id})

    def validate_yaml(self, body: bytes) -> None:
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorized() or self._repo(repo) is None:
            return
        files = json.loads(body)["files"]
        self._json(
            200,
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ]
            },
        )

    def commit(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorized():
            return
        target = self._repo(repo)
        if target is None:
            return
        header: dict[str, Any] = {}
        added: dict[str, bytes] = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                value = item["value"]
                added[value["path"]] = base64.b64decode(value["content"])
            else:
                self._json(400, {"error": f"the fake Hub does not support {item['key']!r} entries"})
                return
        digest = hashlib.sha1(target.sha.encode())
        for path in sorted(added):
            digest.update(path.encode() + b"\0" + added[path])
        oid = digest.hexdigest()
        with self.fake.lock:
            target.files.update(added)
            target.commits.append({"oid": oid, "summary": header.get("summary"), "files": sorted(added)})
        self._json(200, {"commitUrl": f"{self.fake.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    def model_info(self, body: bytes, repo: str, rev: str = "main") -> None:
        target = self._repo(repo)
        if target is None:
            return
        self._json(
            200,
            {
                "id": repo,
                "modelId": repo,
                "sha": target.sha,
                "private": target.private,
                "siblings": [{"rfilename": name} for name in sorted(target.files)],
            },
        )

    def resolve(self, body: bytes, repo: str, rev: str, file: str) -> None:
        target = self._repo(repo)
        if target is None:
            return
        data = target.files.get(file)
        if data is None:
            self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": target.sha}
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", target.sha)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


if __name__ == "__main__":  # pragma: no cover - manual use
    import time

    with FakeHub() as hub:
        print(f"fake Hub at {hub.url} (export HF_ENDPOINT={hub.url}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
