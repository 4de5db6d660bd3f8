"""A small in-memory HTTP server that speaks the part of the Hub API that publishing and downloading use.

It lets the tests run huggingface_hub's real push and download code over real HTTP (base URL through
`HF_ENDPOINT`): create-repo, validate-yaml, preupload, commit (newline-delimited JSON), model info, and
`resolve` for HEAD/GET of files. Every request is recorded with its Authorization header so tests can check
that the token was sent to the server and nowhere else. Run it standalone with `python tests/hub_server.py`.

It can also serve read-only *dataset* repos (`FakeHub.add_dataset`), with the endpoints that
`datasets.load_dataset("owner/name")` calls: dataset info (`/api/datasets/{repo}[/revision/{rev}]`), tree
listing (`/api/datasets/{repo}/tree/{rev}[/{path}]`), paths-info (POST `/api/datasets/{repo}/paths-info/{rev}`)
and `resolve` (`/datasets/{repo}/resolve/{rev}/{file}`, HEAD/GET, with byte ranges).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

DEFAULT_USER = "test-user"
# Files the real Hub keeps in git itself; everything else (parquet, images, weights) it stores with LFS.
_TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".csv", ".gitattributes", ".py")


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    repo_type: str = "model"

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def has_revision(self, rev: str) -> bool:
        return rev == "main" or rev == self.sha


def git_blob_oid(data: bytes) -> str:
    """The id git gives a file's content (what the Hub reports as `oid` and the ETag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return not path.endswith(_TEXT_SUFFIXES)


def file_etag(path: str, data: bytes) -> str:
    """The ETag the Hub sends for a file: the sha256 of an LFS file, the git blob id of any other."""
    return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_blob_oid(data)


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
        self.repos: dict[str, Repo] = {}  # model repos, by repo id
        self.datasets: dict[str, Repo] = {}  # dataset repos, by repo id
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_dataset(self, repo_id: str, source: Path | str | Mapping[str, bytes], *, private: bool = False) -> Repo:
        """Serve a dataset repo holding `source` (a folder, read recursively, or a `{path: bytes}` mapping).

        The repo gets one commit whose id depends only on the content, so the same files give the same sha.
        """
        if isinstance(source, Mapping):
            files = {str(path): bytes(data) for path, data in source.items()}
        else:
            root = Path(source)
            files = {
                item.relative_to(root).as_posix(): item.read_bytes()
                for item in sorted(root.rglob("*"))
                if item.is_file() and not any(part.startswith(".") for part in item.relative_to(root).parts[:-1])
            }
        if not files:
            raise ValueError(f"no files to serve for dataset {repo_id!r}")
        digest = hashlib.sha1(b"dataset\0" + repo_id.encode())
        for path in sorted(files):
            digest.update(b"\0" + path.encode() + b"\0" + files[path])
        repo = Repo(repo_id, private=private, files=files, repo_type="dataset")
        repo.commits.append({"oid": digest.hexdigest(), "summary": "initial commit", "files": sorted(files)})
        with self.lock:
            self.datasets[repo_id] = repo
        return repo

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
# Routes match the raw (still percent-encoded) path, so that a revision such as `refs%2Fpr%2F1` stays one
# segment; the captured groups are decoded before the handler sees them.
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    # read-only dataset repos
    ("GET", re.compile(rf"^/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "dataset_info"),
    ("GET", re.compile(rf"^/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "dataset_tree"),
    ("POST", re.compile(rf"^/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "dataset_paths_info"),
    ("HEAD", re.compile(rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "dataset_resolve"),
    ("GET", re.compile(rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "dataset_resolve"),
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
        raw_path = urlparse(self.path).path
        path = unquote(raw_path)
        with self.fake.lock:
            self.fake.requests.append(RecordedRequest(method, path, self.headers.get("Authorization"), body))
        for verb, pattern, name in _ROUTES:
            match = pattern.match(raw_path)
            if verb == method and match:
                groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                getattr(self, name)(body=body, **groups)
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

    def _dataset(self, repo: str, rev: str) -> Repo | None:
        """The dataset repo at `rev` ("main" or its commit id), or None after answering 401/404 like the Hub."""
        found = self.fake.datasets.get(repo)
        if found is not None and found.private and not self._authorized():
            return None
        if found is None:
            self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        if not found.has_revision(rev):
            self._json(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
            return None
        return found

    def _query(self) -> dict[str, str]:
        return {key: values[-1] for key, values in parse_qs(urlparse(self.path).query).items()}

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

    # -- dataset repos (read only) ---------------------------------------------------------------------------------
    def dataset_info(self, body: bytes, repo: str, rev: str = "main") -> None:
        target = self._dataset(repo, rev)
        if target is None:
            return
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "author": repo.split("/")[0],
                "sha": target.sha,
                "private": target.private,
                "gated": False,
                "disabled": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": name} for name in sorted(target.files)],
            },
        )

    @staticmethod
    def _entry(path: str, data: bytes | None) -> dict[str, Any]:
        if data is None:
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        if is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _lookup(self, repo: Repo, path: str) -> dict[str, Any] | None:
        """The tree entry of a file or folder of the repo, or None."""
        if path in repo.files:
            return self._entry(path, repo.files[path])
        if any(name.startswith(path + "/") for name in repo.files):
            return self._entry(path, None)
        return None

    def dataset_tree(self, body: bytes, repo: str, rev: str, path: str = "") -> None:
        target = self._dataset(repo, rev)
        if target is None:
            return
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and (path in target.files or self._lookup(target, path) is None):
            self._json(404, {"error": f"Entry not found: {path}"}, {"X-Error-Code": "EntryNotFound"})
            return
        recursive = self._query().get("recursive", "false").lower() in {"1", "true"}
        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(target.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, self._entry(folder, None))
            if recursive or len(parts) == 1:
                entries[name] = self._entry(name, target.files[name])
        self._json(200, [entries[key] for key in sorted(entries)])

    def dataset_paths_info(self, body: bytes, repo: str, rev: str) -> None:
        target = self._dataset(repo, rev)
        if target is None:
            return
        content_type = self.headers.get("Content-Type") or ""
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        found = [self._lookup(target, path.strip("/")) for path in ([paths] if isinstance(paths, str) else paths)]
        self._json(200, [entry for entry in found if entry is not None])

    def dataset_resolve(self, body: bytes, repo: str, rev: str, file: str) -> None:
        target = self._dataset(repo, rev)
        if target is None:
            return
        data = target.files.get(file)
        if data is None:
            self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": target.sha}
            )
            return
        status, start, end = 200, 0, len(data)
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if ranged and (ranged.group(1) or ranged.group(2)):
            if ranged.group(1):
                start = int(ranged.group(1))
                end = min(int(ranged.group(2)) + 1, len(data)) if ranged.group(2) else len(data)
            else:  # suffix range: the last N bytes
                start = max(len(data) - int(ranged.group(2)), 0)
            if start >= len(data) and len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = data[start:end]
        etag = file_etag(file, data)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", target.sha)
        if is_lfs(file):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(chunk)


if __name__ == "__main__":  # pragma: no cover - manual use
    import time

    with FakeHub() as hub:
        print(f"fake Hub at {hub.url} (export HF_ENDPOINT={hub.url}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
