"""The Hugging Face upload: idempotent, batched, retried and resumable, and it never leaks the token.

A release is hundreds of multi-GB WebDataset shards plus a small index and the dataset card. Uploading them one
commit per file would flood the repo history (and the Hub rate-limits commits), one commit for everything would redo
hours of work after one transient error, so files go up in commits of bounded count and size. Before uploading, the
repo is listed and every file already there with the same checksum is skipped; that is what makes a rerun after a
crash (or a re-publish with nothing new) cheap and free of duplicates. Each commit is retried on 429 / 5xx with
exponential backoff (honouring `Retry-After`), and before every retry the repo is listed again: a commit that landed
but whose answer was lost is then recognised instead of being committed twice.

Checksums are the Hub's own: for LFS / Xet files the tree listing gives the content's sha256, for regular git files
the git blob id, sha1(b"blob <size>\\0" + content); the local file's matching hash is computed, and only when the sizes
already agree.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile

T = TypeVar("T")

REPO_TYPE = "dataset"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_WAIT_S = 600.0  # a longer Retry-After is cut to this; a wait past it is better spent failing loudly
_CHUNK = 8 * 2**20
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{16,}")  # what any HF token looks like, scrubbed even when not ours

try:  # the transport errors huggingface_hub itself retries (its HTTP client in 2.4.0 is httpx2)
    import httpx2

    _TRANSIENT_EXC: tuple[type[BaseException], ...] = (
        httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError,
    )
except ImportError:  # pragma: no cover - another huggingface_hub
    _TRANSIENT_EXC = ()


@dataclass(frozen=True)
class HubTarget:
    """Where a release goes. The token is left out of repr so that logging the target cannot leak it."""

    repo_id: str  # HF_REPO_ID
    token: str | None = field(default=None, repr=False)  # HF_TOKEN, never logged or returned
    endpoint: str | None = None  # HF_ENDPOINT
    private: bool = True  # only applies when the repo is created
    revision: str = "main"  # must already exist

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HubTarget:
        """The target the deployment configures (HF_REPO_ID, HF_TOKEN, HF_ENDPOINT)."""
        env = os.environ if env is None else env
        if not env.get("HF_REPO_ID"):
            raise ValueError("HF_REPO_ID is not set: no Hugging Face dataset repo to publish to")
        values: dict[str, Any] = {"repo_id": env["HF_REPO_ID"], "token": env.get("HF_TOKEN") or None,
                                  "endpoint": env.get("HF_ENDPOINT") or None}
        return cls(**{**values, **overrides})


@dataclass
class UploadReport:
    """What one `publish_files` run did. Paths are repo paths; `retries` counts every retried Hub call."""

    uploaded: list[str]
    skipped: list[str]  # already on the Hub with the same checksum
    commits: int
    retries: int
    commit_urls: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # removed from the repo (superseded shards)


class HubPublishError(RuntimeError):
    """The upload failed. The message is scrubbed of the token, and the Hub's exception (whose request still holds
    the Authorization header) is deliberately not chained; `report` says what had been uploaded before the failure,
    and a rerun resumes from there."""

    def __init__(self, message: str, *, status_code: int | None = None, report: UploadReport | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.report = report


@dataclass(frozen=True)
class _Remote:
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer, for LFS files)
    sha256: str | None  # the content's sha256, for LFS / Xet files


class _LocalHashes:
    """Each local file is hashed at most once per run, and only the hash the Hub has for it: shards are large."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], str] = {}

    def matches(self, local: Path, remote: _Remote) -> bool:
        if local.stat().st_size != remote.size:
            return False
        if remote.sha256 is not None:
            return self._get(local, "sha256") == remote.sha256
        return self._get(local, "git") == remote.blob_id

    def _get(self, local: Path, kind: str) -> str:
        key = (local, kind)
        if key not in self._cache:
            self._cache[key] = sha256_file(local) if kind == "sha256" else git_blob_sha1(local)
        return self._cache[key]


def sha256_file(path: Path) -> str:
    """The sha256 the Hub reports as `lfs.oid` for an LFS (or Xet) file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id the Hub reports as `oid` for a regular file: sha1 of a `blob <size>\\0` header + content."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def _retryable(exc: BaseException) -> bool:
    status = _status(exc)
    return (status is not None and (status in RETRYABLE_STATUS or status >= 500)) or isinstance(exc, _TRANSIENT_EXC)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the Hub asked to wait (`Retry-After`: seconds or an HTTP date), if it said."""
    if not isinstance(exc, HfHubHTTPError) or exc.response is None:
        return None
    value = exc.response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _attempt(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """Run `fn`, handing back its error instead of raising it, so the caller raises its own error outside the
    `except` block: `HubPublishError` then has no `__context__` holding the original (and its request headers)."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - every failure is reported as HubPublishError by the caller
        return None, exc


def _batches(items: list[tuple[str, Path, int]], max_files: int, max_bytes: int) -> list[list[tuple[str, Path, int]]]:
    """Split in order into commits of at most `max_files` files and `max_bytes` bytes (a bigger file goes alone)."""
    batches: list[list[tuple[str, Path, int]]] = []
    current: list[tuple[str, Path, int]] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_files or size + item[2] > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item[2]
    if current:
        batches.append(current)
    return batches


class _Session:
    """One run: the client, the token to scrub, the report so far and the retry policy."""

    def __init__(self, target: HubTarget, retries: int, backoff_s: float, log: Callable[[str], object]) -> None:
        self.target = target
        self.secret = target.token or get_token()  # what HfApi will send when no token is given
        self.api = HfApi(endpoint=target.endpoint, token=target.token)
        self.retries = retries
        self.backoff_s = backoff_s
        self._log = log
        self.hashes = _LocalHashes()
        self.report = UploadReport(uploaded=[], skipped=[], commits=0, retries=0)

    def log(self, line: str) -> None:
        self._log(_scrub(line, self.secret))

    def fail(self, what: str, exc: Exception) -> HubPublishError:
        text = _scrub(f"{what}: {type(exc).__name__}: {exc}", self.secret)
        return HubPublishError(text, status_code=_status(exc), report=self.report)

    def wait(self, what: str, attempt: int, exc: Exception) -> None:
        """Count and log a retry, then sleep what the Hub asked for, or the exponential backoff."""
        delay = _retry_after(exc)
        if delay is None:
            delay = self.backoff_s * 2 ** (attempt - 1)
        delay = min(delay, MAX_WAIT_S)
        self.report.retries += 1
        reason = _status(exc) or type(exc).__name__
        self.log(f"hub: {what} failed ({reason}); retry {attempt}/{self.retries} in {delay:.1f}s")
        time.sleep(delay)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` with retries on transient errors; anything else, or the last failure, as HubPublishError."""
        attempt = 0
        while True:
            result, exc = _attempt(fn)
            if exc is None:
                return result  # type: ignore[return-value]
            if not _retryable(exc) or attempt >= self.retries:
                break
            attempt += 1
            self.wait(what, attempt, exc)
        raise self.fail(what, exc) from None

    def remote(self) -> dict[str, _Remote]:
        """The repo's files at the target revision: path -> size, git blob id and (LFS / Xet) sha256."""

        def listing() -> dict[str, _Remote]:
            tree = self.api.list_repo_tree(self.target.repo_id, recursive=True, repo_type=REPO_TYPE,
                                           revision=self.target.revision)
            return {e.path: _Remote(e.size, e.blob_id, e.lfs.sha256 if e.lfs else None)
                    for e in tree if isinstance(e, RepoFile)}

        return self.call("listing the repo", listing)

    def _create_commit(self, batch: list[tuple[str, Path, int]], message: str) -> Any:
        """Fresh operations per attempt: huggingface_hub mutates them (upload mode, remote oid) while committing."""
        ops = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local, _ in batch]
        return self.api.create_commit(self.target.repo_id, ops, commit_message=message, repo_type=REPO_TYPE,
                                      revision=self.target.revision)

    def commit(self, batch: list[tuple[str, Path, int]], message: str) -> None:
        """One commit of `batch`, retried; before each retry, files that the lost attempt did land are dropped."""
        attempt = 0
        while True:
            info, exc = _attempt(functools.partial(self._create_commit, batch, message))
            if exc is None:
                self.report.commits += 1
                self.report.commit_urls.append(str(info.commit_url))  # type: ignore[union-attr]
                self.report.uploaded.extend(path for path, _, _ in batch)
                return
            if not _retryable(exc) or attempt >= self.retries:
                break
            attempt += 1
            self.wait(f"commit '{message}'", attempt, exc)
            remote = self.remote()
            landed = [item for item in batch if item[0] in remote and self.hashes.matches(item[1], remote[item[0]])]
            if landed:  # the failed attempt was in fact committed (its answer got lost)
                self.log(f"hub: {len(landed)} file(s) of '{message}' are on the Hub already; not committing them again")
                self.report.commits += 1
                self.report.uploaded.extend(path for path, _, _ in landed)
                batch = [item for item in batch if item not in landed]
                if not batch:
                    return
        raise self.fail(f"commit '{message}'", exc) from None

    def delete(self, paths: list[str], message: str) -> None:
        """One commit removing those of `paths` the repo still has; each attempt lists the repo first, so a retry
        after a lost answer deletes nothing twice."""

        def attempt() -> None:
            tree = self.api.list_repo_tree(self.target.repo_id, recursive=True, repo_type=REPO_TYPE,
                                           revision=self.target.revision)
            present = sorted({e.path for e in tree if isinstance(e, RepoFile)} & set(paths))
            if not present:
                return
            info = self.api.create_commit(self.target.repo_id, [CommitOperationDelete(path_in_repo=p) for p in present],
                                          commit_message=message, repo_type=REPO_TYPE, revision=self.target.revision)
            self.report.commits += 1
            self.report.commit_urls.append(str(info.commit_url))
            self.report.deleted.extend(present)

        self.call(f"commit '{message}'", attempt)


def publish_files(
    target: HubTarget,
    files: dict[str, Path],
    *,
    max_files_per_commit: int = 50,
    max_bytes_per_commit: int = 2 * 2**30,
    message: str = "Publish Emilia release files",
    retries: int = 6,
    backoff_s: float = 1.0,
    log: Callable[[str], object] = print,
    delete: list[str] | tuple[str, ...] = (),
) -> UploadReport:
    """Upload `files` (repo path -> local file) to the dataset repo, skipping those already there unchanged, then
    remove the `delete` paths the repo has (shards a newer version of their episodes emptied), in a last commit.

    Commits follow the dict's order: put the shards first and the index and README last, so the repo never
    advertises shards it does not have yet. After the commits the repo is listed once more and every file checked,
    because the Hub can silently drop a file from a commit (a `.gitignore` in the repo does that). Raises
    `HubPublishError` (token-free) on a non-transient error or when retries run out; a rerun resumes.
    """
    if max_files_per_commit < 1 or max_bytes_per_commit < 1:
        raise ValueError("max_files_per_commit and max_bytes_per_commit must be positive")
    items: list[tuple[str, Path, int]] = []
    for path, local in files.items():
        if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"not a relative repo path: {path!r}")
        local = Path(local)
        if not local.is_file():
            raise FileNotFoundError(f"{path}: local file {local} does not exist")
        items.append((path, local, local.stat().st_size))

    s = _Session(target, retries, backoff_s, log)
    repo = f"{target.repo_id}@{target.revision}"
    s.call("creating the repo", lambda: s.api.create_repo(
        target.repo_id, repo_type=REPO_TYPE, private=target.private, exist_ok=True))
    remote = s.remote()
    pending: list[tuple[str, Path, int]] = []
    for item in items:
        if item[0] in remote and s.hashes.matches(item[1], remote[item[0]]):
            s.report.skipped.append(item[0])
        else:
            pending.append(item)
    batches = _batches(pending, max_files_per_commit, max_bytes_per_commit)
    s.log(f"hub: {repo}: {len(items)} file(s), {len(s.report.skipped)} already there, uploading {len(pending)} "
          f"({sum(i[2] for i in pending)} bytes) in {len(batches)} commit(s)")

    for n, batch in enumerate(batches, 1):
        label = f"{message} ({n}/{len(batches)})" if len(batches) > 1 else message
        s.commit(batch, label)
        s.log(f"hub: {repo}: committed {n}/{len(batches)}: {len(batch)} file(s), {sum(i[2] for i in batch)} bytes")

    if pending:
        remote = s.remote()
        missing = [p for p, local, _ in pending if p not in remote or not s.hashes.matches(local, remote[p])]
        if missing:
            raise HubPublishError(f"after the upload, {len(missing)} file(s) are missing or differ on the Hub "
                                  f"(a .gitignore in the repo?): {', '.join(missing[:10])}", report=s.report)
    doomed = sorted(set(delete) - set(files))
    if doomed and set(doomed) & set(remote):
        s.delete(doomed, f"{message} (remove superseded)")
        s.log(f"hub: {repo}: removed {len(s.report.deleted)} superseded file(s)")
    return s.report
