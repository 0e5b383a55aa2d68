"""A small Hugging Face Hub look-alike on 127.0.0.1 for round-trip tests (never imported by the package).

It speaks the HTTP endpoints that the real `huggingface_hub` client (2.x) and `transformers.from_pretrained`
use for a push + load round trip, with the status codes, error headers and download headers they expect:

- `POST /api/repos/create`, `POST /api/validate-yaml`, `GET /api/whoami-v2`
- `POST /api/models/{repo}/preupload/{rev}` (regular vs LFS upload mode, remote oid for unchanged files)
- `POST /{repo}.git/info/lfs/objects/batch` + `PUT /_lfs/{oid}` + `POST /_lfs/{oid}/verify` (classic LFS;
  the client must run with `HF_HUB_DISABLE_XET=1`, otherwise it takes the Xet path this server does not speak)
- `POST /api/models/{repo}/commit/{rev}` (ndjson: header, file, lfsFile, deletedFile, deletedFolder)
- `POST|DELETE /api/models/{repo}/branch/{branch}`, `GET /api/models/{repo}/refs`
- `GET /api/models/{repo}[/revision/{rev}]`, `GET /api/models/{repo}/tree/{rev}[/{path}]`
- `HEAD|GET /{repo}/resolve/{rev}/{path}` with ETag, X-Repo-Commit, Content-Length, X-Linked-Etag /
  X-Linked-Size for LFS files, and byte ranges (resumed downloads)

Bearer-token auth: writes need a token whose user owns the namespace (else 401/403); private repos are
invisible without it (401 + `X-Error-Code: RepoNotFound`, as the Hub does). `fail_points` makes the
server drop the connection of chosen requests without answering, to simulate a network cut mid-upload.
Written here because no maintained Python package serves the Hub API locally.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.png", "*.jpg",
                "*.gguf", "*.npy", "*.npz", "*.parquet", "*.arrow", "*.zst", "*.gz", "*.zip", "*.tar")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores any file above 10 MB in LFS
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    kind: str  # "regular" or "lfs"
    size: int
    blob_id: str  # git sha1 of the content (regular) or of the LFS pointer
    sha256: str | None = None  # LFS object id
    data: bytes | None = None  # regular files only


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class DropConnection(Exception):
    """Raised by a handler to cut the TCP connection without an answer."""


class FakeHub:
    """`with FakeHub(tmp_path, tokens={"tok": "alice"}) as hub: ... hub.url`."""

    def __init__(self, storage: Path, tokens: dict[str, str] | None = None):
        self.storage = Path(storage)
        self.lfs_dir = self.storage / "lfs"
        self.lfs_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.fail_points: Counter = Counter()  # name -> how many of the next such requests to drop
        self.requests: list[tuple[str, str]] = []
        self._commit_counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment in p)

    # ------------------------------------------------------------------ repo model
    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], message: str) -> Commit:
        self._commit_counter += 1
        payload = json.dumps([repo.repo_id, parent, message, self._commit_counter, sorted((p, e.blob_id) for p, e in files.items())])
        oid = hashlib.sha1(payload.encode()).hexdigest()
        commit = Commit(oid, parent, message, files, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        gitattributes = Entry("regular", len(GITATTRIBUTES), git_blob_sha1(GITATTRIBUTES), data=GITATTRIBUTES)
        repo.branches["main"] = self._new_commit(repo, None, {".gitattributes": gitattributes}, "initial commit").oid
        self.repos[repo_id] = repo
        return repo

    def lfs_path(self, sha256: str) -> Path:
        return self.lfs_dir / sha256

    def file_bytes(self, entry: Entry) -> bytes:
        return entry.data if entry.kind == "regular" else self.lfs_path(entry.sha256).read_bytes()


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return any(fnmatch(path.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS) or size > LFS_SIZE_THRESHOLD or b"\0" in sample


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        return

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self):
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.hub.tokens.get(token)
        if user is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user()
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        owner = repo_id.split("/")[0]
        if repo.private and user != owner:
            raise HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write:
            if user is None:
                raise HttpError(401, "You must be authenticated to write to this repo")
            if user != owner:
                raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _drop_if_asked(self, point: str) -> None:
        with self.hub.lock:
            if self.hub.fail_points[point] > 0:
                self.hub.fail_points[point] -= 1
                raise DropConnection(point)

    def _dispatch(self):
        split = urlsplit(self.path)
        parts = split.path.split("/")[1:]  # raw (still quoted) segments
        query = parse_qs(split.query)
        self.hub.requests.append((self.command, split.path))
        try:
            self._route(parts, query)
        except DropConnection:
            # Read nothing more, answer nothing: the client sees the connection die mid-request.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HttpError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send_json(err.status, {"error": err.message}, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # ------------------------------------------------------------------ routing
    def _route(self, parts: list[str], query: dict):
        method = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["validate-yaml"] and method == "POST":
                self._body()
                return self._send_json(200, {"errors": [], "warnings": []})
            if rest == ["whoami-v2"] and method == "GET":
                user = self._user()
                if user is None:
                    raise HttpError(401, "Invalid username or password.")
                return self._send_json(200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}})
            if len(rest) >= 3 and rest[0] == "models":
                repo_id = f"{unquote(rest[1])}/{unquote(rest[2])}"
                tail = rest[3:]
                if not tail and method == "GET":
                    return self._model_info(repo_id, "main", query)
                if tail[:1] == ["revision"] and method == "GET":
                    return self._model_info(repo_id, unquote("/".join(tail[1:])), query)
                if tail[:1] == ["preupload"] and method == "POST":
                    return self._preupload(repo_id, unquote(tail[1]))
                if tail[:1] == ["commit"] and method == "POST":
                    return self._commit(repo_id, unquote(tail[1]))
                if tail[:1] == ["branch"] and method in ("POST", "DELETE"):
                    return self._branch(repo_id, unquote("/".join(tail[1:])))
                if tail == ["refs"] and method == "GET":
                    return self._refs(repo_id)
                if tail[:1] == ["tree"] and method == "GET":
                    path = unquote("/".join(tail[2:])) if len(tail) > 2 else ""
                    return self._tree(repo_id, unquote(tail[1]), path, query)
        if parts[:1] == ["_lfs"] and len(parts) >= 2:
            oid = parts[1]
            if len(parts) == 2 and method == "PUT":
                return self._lfs_put(oid)
            if parts[2:] == ["verify"] and method == "POST":
                return self._lfs_verify(oid)
        if len(parts) >= 2 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{unquote(parts[0])}/{unquote(parts[1][:-4])}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return self._resolve(repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        self._body()
        raise HttpError(404, f"fake hub: no route for {method} {self.path}")

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self):
        payload = self._json_body()
        user = self._user()
        if user is None:
            raise HttpError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if namespace != user:
            raise HttpError(403, f"You don't have the rights to create a model under the namespace {namespace}")
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._send_json(409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.hub.create_repo(repo_id, private)
        self._send_json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _model_info(self, repo_id: str, revision: str, query: dict):
        repo = self._repo(repo_id)
        commit = self._revision(repo, revision)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.kind == "lfs":
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            siblings.append(sibling)
        self._send_json(200, {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit.oid, "lastModified": commit.date, "createdAt": commit.date,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "library_name": "transformers", "siblings": siblings,
        })

    def _preupload(self, repo_id: str, revision: str):
        payload = self._json_body()
        repo = self._repo(repo_id, write=True)
        commit = self._revision(repo, revision)
        files = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            mode = "lfs" if _is_lfs(item["path"], item["size"], sample) else "regular"
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.kind == "lfs" else existing.blob_id
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str):
        payload = self._json_body()
        self._repo(repo_id, write=True)
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            path = self.hub.lfs_path(oid)
            if path.exists() and path.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, client skips upload
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.hub.url}/_lfs/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/_lfs/{oid}/verify"},
                }})
        self._send_json(200, {"transfer": "basic", "objects": objects},
                        headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str):
        self._drop_if_asked("lfs_put")
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HttpError(400, "uploaded content does not match its sha256")
        tmp = self.hub.lfs_path(oid).with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(self.hub.lfs_path(oid))
        self._send(200, b"", content_type="text/plain")

    def _lfs_verify(self, oid: str):
        payload = self._json_body()
        path = self.hub.lfs_path(oid)
        if not path.exists() or path.stat().st_size != payload.get("size"):
            raise HttpError(404, f"LFS object {oid} not found")
        self._send_json(200, {"success": True})

    def _commit(self, repo_id: str, revision: str):
        self._drop_if_asked("commit")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            repo = self._repo(repo_id, write=True)
            if revision not in repo.branches:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            files = dict(head.files)
            message = "commit"
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    message = value.get("summary") or message
                    parent = value.get("parentCommit")
                    if parent and parent != head.oid:
                        raise HttpError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = Entry("regular", len(data), git_blob_sha1(data), data=data)
                elif key == "lfsFile":
                    sha = value["oid"]
                    path = self.hub.lfs_path(sha)
                    if not path.exists():
                        raise HttpError(422, f"LFS object {sha} for {value['path']} was never uploaded")
                    size = path.stat().st_size
                    files[value["path"]] = Entry("lfs", size, git_blob_sha1(lfs_pointer(sha, size)), sha256=sha)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                else:
                    raise HttpError(400, f"unknown commit operation {key!r}")
            commit = self.hub._new_commit(repo, head.oid, files, message)
            repo.branches[revision] = commit.oid
        self._send_json(200, {"success": True, "commitOid": commit.oid,
                              "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}", "pullRequestUrl": None})

    def _branch(self, repo_id: str, branch: str):
        payload = self._json_body()
        with self.hub.lock:
            repo = self._repo(repo_id, write=True)
            if self.command == "DELETE":
                if repo.branches.pop(branch, None) is None:
                    raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                return self._send_json(200, {})
            if branch in repo.branches:
                raise HttpError(409, f"Reference refs/heads/{branch} already exists")
            start = self._revision(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._send_json(200, {})

    def _refs(self, repo_id: str):
        repo = self._repo(repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in sorted(repo.branches.items())]
        self._send_json(200, {"branches": branches, "tags": [], "converts": []})

    def _tree(self, repo_id: str, revision: str, path: str, query: dict):
        repo = self._repo(repo_id)
        commit = self._revision(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HttpError(404, f"{path} does not exist", "EntryNotFound")
        items, folders = [], set()
        for file_path, entry in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rel = file_path[len(prefix):]
            if "/" in rel and not recursive:
                folders.add(prefix + rel.split("/")[0])
                continue
            for i in range(rel.count("/")):  # recursive listings include the folders too
                folders.add(prefix + "/".join(rel.split("/")[: i + 1]))
            item = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": file_path}
            if entry.kind == "lfs":
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
            items.append(item)
        items += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in sorted(folders)]
        self._send_json(200, items)

    def _resolve(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        commit = self._revision(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.hub.file_bytes(entry)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.blob_id}"', "Accept-Ranges": "bytes",
                   "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}
        if entry.kind == "lfs":
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status = 200
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and self.command == "GET":
            start_text, _, end_text = range_header[len("bytes="):].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(data) - 1
            if start >= len(data):
                raise HttpError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")
