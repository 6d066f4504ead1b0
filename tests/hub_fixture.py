"""A fake Hugging Face Hub on 127.0.0.1, speaking the HTTP that huggingface_hub 2.4.0's HfApi sends for a dataset repo.

No offline Hub server exists, so the upload code is tested against this one: it
answers create-repo (409 when the repo exists, so `exist_ok` works), repo info, the tree listing (recursive, paginated
with a `Link` header like the Hub), paths-info, preupload (applying the repo's `.gitignore`, as the Hub does), commit
(NDJSON), YAML validation of the dataset card, whoami, file downloads (`resolve`) and, for files at or above
`lfs_threshold`, the git-LFS batch + PUT upload the client falls back to when Xet is disabled. State lives in memory
per repo: path -> bytes, and the list of commits made through the commit endpoint (the initial `.gitattributes` commit
that create-repo makes, as the Hub does, is not in that list).

Faults are injected per route: `fail_next("/commit/", 429, times=1)` answers the next matching request with 429
(`Retry-After: 0`); `apply=True` applies the request first and then answers the error, which is a commit that landed
but whose response was lost. Every request is recorded with its method, path (with query) and headers so tests can
check that the token travels in `Authorization` and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import importlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

TOKEN = "hf_fakeHubSecretToken0123456789abcdef"  # what the `fake_hub` fixture's Hub accepts
GITATTRIBUTES = b"*.tar filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as `oid` for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that git stores in place of an LFS file (its blob id is the file's `oid`)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-cased names
    body_size: int


@dataclass
class Commit:
    oid: str
    summary: str
    added: list[str]  # paths written by this commit (regular and LFS)
    deleted: list[str]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS pointers
    commits: list[Commit] = field(default_factory=list)
    head: str = "0" * 40


@dataclass
class _Fault:
    route: str
    status: int
    times: int
    method: str | None
    apply: bool
    after: int


class _HubError(Exception):
    """An error answer: status, message and the `X-Error-Code` huggingface_hub maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, **body: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class FakeHub:
    """The server and its state. `token`: the only accepted bearer token (None: anything, even nothing, goes).

    `lfs_threshold`: files this big or bigger are answered `uploadMode: "lfs"` at preupload (None: every file is
    "regular", base64 inside the commit). The LFS path needs Xet disabled on the client (the fixture does that);
    `page_size` is how many tree entries one listing page holds (the Hub: 1000).
    """

    def __init__(self, token: str | None = TOKEN, lfs_threshold: int | None = None, page_size: int = 1000) -> None:
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.page_size = page_size
        self.requests: list[Request] = []
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lfs_objects: dict[str, bytes] = {}  # sha256 -> content, from LFS PUTs
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._salt = uuid.uuid4().hex  # commit ids unique across hubs: huggingface_hub caches downloads by commit
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length

            def setup(self) -> None:
                super().setup()
                # headers and body go out as two writes: without this, Nagle + delayed ACK cost ~40 ms a request
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hub._handle(self)

            do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- test helpers

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        """The repo's content now: path -> bytes (LFS files resolved to their content)."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            return dict(repo.files) if repo else {}

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        """Commits made through the commit endpoint, oldest first."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            return list(repo.commits) if repo else []

    def lfs_paths(self, repo_id: str, repo_type: str = "dataset") -> set[str]:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            return set(repo.lfs) if repo else set()

    def create(self, repo_id: str, repo_type: str = "dataset", files: dict[str, bytes] | None = None) -> None:
        """Seed a repo directly (no request recorded), e.g. one a previous publisher left behind."""
        with self._lock:
            repo = self._new_repo(repo_type, repo_id, private=True)
            for path, data in (files or {}).items():
                repo.files[path] = data

    def fail_next(self, route: str, status: int, times: int = 1, *, after: int = 0, method: str | None = None,
                  apply: bool = False) -> None:
        """Answer the next `times` requests whose path contains `route` with `status` (429 gets `Retry-After: 0`).

        `after`: let that many matching requests through first (e.g. `after=1` on "/commit/": fail from the second
        commit on). `apply=True` performs the request before answering the error: the commit lands, the client never
        hears of it. Faults queue: `fail_next(r, 429, after=1); fail_next(r, 500, after=1)` fails the 2nd request
        with 429 and the 3rd with 500.
        """
        with self._lock:
            self._faults.append(_Fault(route, status, times, method, apply, after))

    def hits(self, route: str, method: str | None = None) -> int:
        with self._lock:
            return sum(route in r.path and (method is None or r.method == method) for r in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------------------------------------------- serving

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            self.requests.append(Request(h.command, h.path, headers, len(body)))
            fault = self._take_fault(h.command, h.path)
        try:
            if fault is not None and not fault.apply:
                raise _HubError(fault.status, f"injected {fault.status}")
            status, payload, extra = self._route(h.command, h.path, headers, body)
            if fault is not None:  # applied, then the answer is "lost"
                raise _HubError(fault.status, f"injected {fault.status} (after applying)")
        except _HubError as e:
            extra = {"Retry-After": "0"} if e.status == 429 else {}
            if e.code:
                extra["X-Error-Code"] = e.code
            extra["X-Error-Message"] = e.message
            status, payload = e.status, json.dumps({"error": e.message, **e.body}).encode()
        self._answer(h, status, payload, extra)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        """Every matching fault counts the request against its `after`; the first one armed then fires."""
        chosen = None
        for fault in self._faults:
            if fault.route not in path or fault.method not in (None, method):
                continue
            if fault.after > 0:
                fault.after -= 1
            elif chosen is None and fault.times > 0:
                fault.times -= 1
                chosen = fault
        return chosen

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, payload: bytes, extra: dict[str, str]) -> None:
        h.send_response(status)
        extra = {"Content-Type": "application/json", **extra}
        for k, v in extra.items():
            h.send_header(k, v)
        h.send_header("X-Request-Id", "fake-hub")
        if "Content-Length" not in extra:
            h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                h.wfile.write(payload)

    def _auth(self, headers: dict[str, str], *, write: bool, repo: Repo | None = None) -> None:
        """Writes need the token; reads of a private repo too (the Hub answers 404 there, not 401)."""
        if self.token is None:
            return
        ok = headers.get("authorization") == f"Bearer {self.token}"
        if write and not ok:
            raise _HubError(401, "Invalid credentials in Authorization header")
        if repo is not None and repo.private and not ok:
            raise _HubError(404, "Repository not found", "RepoNotFound")

    def _route(self, method: str, raw_path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, bytes, dict[str, str]]:
        split = urlsplit(raw_path)
        path, query = unquote(split.path), parse_qs(split.query)
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(headers, json.loads(body))
        if method == "GET" and path == "/api/whoami-v2":
            self._auth(headers, write=True)
            return _json({"type": "user", "name": "fake-user", "auth": {"type": "access_token"}})
        if method == "POST" and path == "/api/validate-yaml":
            return _json({"errors": [], "warnings": []})
        if method == "PUT" and (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)):
            return self._lfs_put(m.group(1), body)
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path):
            repo_type, repo_id, rest = REPO_TYPES[m.group(1)], m.group(2), m.group(3) or ""
            return self._repo_api(method, repo_type, repo_id, rest, query, headers, body)
        if m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch", path):
            repo_type = REPO_TYPES[m.group(1)] if m.group(1) else "model"
            return self._lfs_batch(repo_type, m.group(2), headers, json.loads(body))
        if m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo_type = REPO_TYPES[m.group(1)] if m.group(1) else "model"
            return self._resolve(method, repo_type, m.group(2), m.group(3), m.group(4), headers)
        raise _HubError(404, f"no route for {method} {path}")

    # ------------------------------------------------------------------------------------------------- endpoints

    def _new_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        repo.files[".gitattributes"] = GITATTRIBUTES  # the Hub's initial commit
        repo.head = self._next_oid()
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _next_oid(self) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._salt} commit {self._counter}".encode()).hexdigest()

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self, headers: dict[str, str], payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        self._auth(headers, write=True)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'fake-user'}/{payload['name']}"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                repo = self._repos[(repo_type, repo_id)]
                url = self._repo_url(repo)  # huggingface_hub reads it back from the 409 (exist_ok)
                raise _HubError(409, f"You already created this {repo_type} repo", url=url)
            repo = self._new_repo(repo_type, repo_id, private=payload.get("visibility", "public") != "public")
        return _json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _get_repo(self, repo_type: str, repo_id: str, headers: dict[str, str], *, write: bool) -> Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            self._auth(headers, write=write)
            raise _HubError(404, "Repository not found", "RepoNotFound")
        self._auth(headers, write=write, repo=repo)
        return repo

    @staticmethod
    def _check_revision(revision: str) -> None:
        if unquote(revision) != "main":
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: str, query: dict[str, list[str]],
                  headers: dict[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
        action, _, tail = rest.partition("/")
        write = action in ("commit", "preupload")
        repo = self._get_repo(repo_type, repo_id, headers, write=write)
        if method == "GET" and action in ("", "revision"):
            if action == "revision":
                self._check_revision(tail)
            return self._info(repo)
        revision, _, sub = tail.partition("/")
        self._check_revision(revision)
        if method == "GET" and action == "tree":
            return self._tree(repo, sub, query)
        if method == "POST" and action == "paths-info":
            form = parse_qs(body.decode())
            with self._lock:
                entries = [self._entry(repo, p) for p in form.get("paths", []) if p in repo.files]
            return _json(entries)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, json.loads(body))
        if method == "POST" and action == "commit":
            return self._commit(repo, body)
        raise _HubError(404, f"no route for {method} {action}")

    def _info(self, repo: Repo) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            siblings = [{"rfilename": p} for p in sorted(repo.files)]
            return _json({"id": repo.repo_id, "_id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                          "sha": repo.head, "private": repo.private, "disabled": False, "gated": False,
                          "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "siblings": siblings})

    def _entry(self, repo: Repo, path: str) -> dict[str, Any]:
        """One tree entry as the Hub lists it: git blob id, size and, for LFS files, the sha256 + pointer size."""
        data = repo.files[path]
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
        if path in repo.lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = lfs_pointer(sha256, len(data))
            entry["oid"] = git_blob_sha1(pointer)
            entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
        else:
            entry["oid"] = git_blob_sha1(data)
        return entry

    def _tree(self, repo: Repo, folder: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        with self._lock:
            paths = sorted(p for p in repo.files if p.startswith(prefix))
            if prefix and not paths:
                raise _HubError(404, f"Entry not found: {folder}", "EntryNotFound")
            entries: list[dict[str, Any]] = []
            folders: set[str] = set()
            for p in paths:
                parts = p[len(prefix):].split("/")
                for depth in range(1, len(parts)):  # the folders on the way, listed once each
                    d = prefix + "/".join(parts[:depth])
                    if d not in folders and (recursive or depth == 1):
                        folders.add(d)
                        entries.append({"type": "directory", "path": d, "oid": git_blob_sha1(d.encode()), "size": 0})
                if recursive or len(parts) == 1:
                    entries.append(self._entry(repo, p))
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.page_size]
        extra = {}
        if start + self.page_size < len(entries):
            url = (f"{self.endpoint}/api/{repo.repo_type}s/{repo.repo_id}/tree/main"
                   f"{'/' + quote(folder) if prefix else ''}?recursive={str(recursive).lower()}"
                   f"&cursor={start + self.page_size}")
            extra["Link"] = f'<{url}>; rel="next"'
        return _json(page, extra)

    def _preupload(self, repo: Repo, payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        answer = []
        with self._lock:
            gitignore = payload.get("gitIgnore") or repo.files.get(".gitignore", b"").decode()
            patterns = [line.strip() for line in gitignore.splitlines() if line.strip() and not line.startswith("#")]
            for f in payload["files"]:
                lfs = self.lfs_threshold is not None and f["size"] >= self.lfs_threshold
                ignored = any(fnmatch.fnmatch(f["path"], p) or fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], p)
                              for p in patterns)  # the Hub answers this, and the client then leaves the file out
                entry: dict[str, Any] = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                         "shouldIgnore": ignored}
                if f["path"] in repo.files:  # what huggingface_hub compares to its own oid to drop no-op files
                    data = repo.files[f["path"]]
                    entry["oid"] = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
                answer.append(entry)
        return _json({"files": answer, "commitOid": repo.head})

    def _commit(self, repo: Repo, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        writes: dict[str, tuple[bytes, bool]] = {}
        deletes: list[str] = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, "only base64 file content is supported")
                writes[value["path"]] = (base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                with self._lock:
                    data = self._lfs_objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    raise _HubError(400, f"LFS object {value['oid']} was never uploaded")
                writes[value["path"]] = (data, True)
            elif key == "deletedFile":
                deletes.append(value["path"])
            else:
                raise _HubError(400, f"unsupported commit operation {key!r}")
        with self._lock:
            if "parentCommit" in header and header["parentCommit"] != repo.head:
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            for path in deletes:
                if path not in repo.files:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for path in deletes:
                repo.files.pop(path)
                repo.lfs.discard(path)
            for path, (data, lfs) in writes.items():
                repo.files[path] = data
                (repo.lfs.add if lfs else repo.lfs.discard)(path)
            repo.head = self._next_oid()
            repo.commits.append(Commit(repo.head, header.get("summary", ""), list(writes), deletes))
            url = f"{self._repo_url(repo)}/commit/{repo.head}"
            return _json({"success": True, "commitOid": repo.head, "commitUrl": url, "pullRequestUrl": None})

    def _lfs_batch(self, repo_type: str, repo_id: str, headers: dict[str, str], payload: dict[str, Any]
                   ) -> tuple[int, bytes, dict[str, str]]:
        self._get_repo(repo_type, repo_id, headers, write=True)
        objects = []
        with self._lock:
            for obj in payload["objects"]:
                entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self._lfs_objects:  # no "actions": already stored, nothing to send
                    entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
        return _json({"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, sha256: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        if hashlib.sha256(body).hexdigest() != sha256:
            raise _HubError(400, "sha256 of the uploaded content does not match the object id")
        with self._lock:
            self._lfs_objects[sha256] = body
        return 200, b"", {}

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str,
                 headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        repo = self._get_repo(repo_type, repo_id, headers, write=False)
        self._check_revision(revision)
        with self._lock:
            if path not in repo.files:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data, entry = repo.files[path], self._entry(repo, path)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            extra = {"Content-Type": "application/octet-stream", "X-Repo-Commit": repo.head, "ETag": f'"{etag}"',
                     "Content-Length": str(len(data))}
        return 200, (b"" if method == "HEAD" else data), extra


def _json(value: Any, extra: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    return 200, json.dumps(value).encode(), dict(extra or {})


def hub_env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point huggingface_hub at `hub` and cut it off from anything real: no stored token, telemetry, progress bars
    or Xet (so LFS files take the plain LFS batch + PUT path the fake implements). huggingface_hub reads most of
    these once at import, so the module constants are patched too."""
    from huggingface_hub import constants

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module: `utils.tqdm` is also a class

    home = tmp_path_factory.mktemp("hf_home")
    for name, value in {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)


@pytest.fixture
def fake_hub_factory(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Callable[..., FakeHub]]:
    """`make(**FakeHub options)`: a hub that HF_ENDPOINT points at (the last one made), closed after the test."""
    hubs: list[FakeHub] = []

    def make(**options: Any) -> FakeHub:
        hub = FakeHub(**options)
        hubs.append(hub)
        hub_env(hub, monkeypatch, tmp_path_factory)
        return hub

    try:
        yield make
    finally:
        for hub in hubs:
            hub.close()


@pytest.fixture
def fake_hub(fake_hub_factory: Callable[..., FakeHub]) -> FakeHub:
    """A fresh fake Hub per test (accepting `TOKEN`, every file "regular"); HF_ENDPOINT points at it."""
    return fake_hub_factory()
