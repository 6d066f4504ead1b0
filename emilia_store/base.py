"""The object-store interface every core package uses: keys, listing pages, whole-object reads and writes.

No Dagster here (the `resources.object_store` resource only builds a store from config). Two backends implement it:
`LocalStore` (a directory, the embedded default) and `S3Store` (S3, R2 or any S3-compatible server). Both make a
write visible only once it is complete (a temporary name then an atomic rename locally; S3 PUTs are atomic), so a
reader never sees half an object, and a key that marks completion can simply be written last.

Both also offer a compare-and-swap write (`get_versioned` + `put_if`): S3's conditional PUT (`If-Match` /
`If-None-Match`), a file lock locally. The release writer (emilia_publish.release) builds its lock and its commits on
it, so two publish runs cannot both think they own the release.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emilia_pipe.keys import join

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # epoch seconds; S3 LastModified, or the later of mtime/ctime locally
    # What the store says about the content: S3's ETag (unquoted); locally `<size>-<mtime_ns>` in hex, which changes
    # whenever the file is rewritten. Empty when unknown (records written before it was kept).
    etag: str = ""

    @property
    def version(self) -> str:
        """Which content of the key this is: the ETag, or size and modification time when the store gave none.

        Part of an episode's identity (emilia_pipe.keys.episode_id_for_key): a changed object is a new episode.
        """
        return self.etag or f"{self.size}-{self.modified!r}"


@dataclass(frozen=True)
class ListPage:
    """One listing call's answer. S3-compatible servers may return fewer keys than asked for, and even no keys with
    `truncated` set (radosgw, or S3 itself over runs of deleted keys): only `truncated` says whether more follow, and
    `token` is where to go on from, which the last key listed cannot always say."""

    objects: list[ObjectInfo]
    truncated: bool  # more keys may follow this page
    token: str | None = None  # pass to `list_page(token=...)` to continue after this page; set when truncated


class PreconditionFailed(RuntimeError):
    """A conditional write (`put_if`) found the object changed (or present, or absent) since it was read."""


class StoreAuthError(PermissionError):
    """The store refused the credentials or the request: names the bucket, endpoint, access key id, operation and
    key (never the secret), instead of botocore's `(403) ... Forbidden` or `SignatureDoesNotMatch ... None`."""


class ObjectStore(Protocol):
    """What assets and sensors need from storage; keys are `/`-separated and relative to the store's root."""

    def list_page(
        self, prefix: str, start_after: str | None = None, max_keys: int = 1000, token: str | None = None
    ) -> ListPage:
        """Up to `max_keys` keys under `prefix` in byte order, after `start_after`, or after the page that returned
        `token` (which then wins over `start_after`)."""
        ...

    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def head(self, key: str) -> ObjectInfo:
        """The object's size, modification time and ETag; KeyError when it is not there."""
        ...

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the token `put_if` compares against; KeyError when it is not there."""
        ...

    def put_if(self, key: str, data: bytes, token: str | None) -> str:
        """Write only if the object is still at `token` (None: only if there is no object); returns the new token.

        Raises `PreconditionFailed` otherwise, having written nothing."""
        ...

    def get_file(self, key: str, path: Path) -> None: ...
    def put_file(self, path: Path, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...


def iter_objects(
    store: ObjectStore, prefix: str, start_after: str | None = None, page_size: int = 1000
) -> Iterator[ObjectInfo]:
    """Every object under `prefix` in key order, one page at a time (for bounded prefixes; sensors page themselves).

    Short and empty pages do not end the walk; only a page that is not truncated does.
    """
    token: str | None = None
    while True:
        page = store.list_page(prefix, start_after=start_after, max_keys=page_size, token=token)
        yield from page.objects
        if not page.truncated:
            return
        start_after, token = next_position(store, prefix, page, start_after, token)


def next_position(
    store: ObjectStore, prefix: str, page: ListPage, start_after: str | None, token: str | None
) -> tuple[str | None, str | None]:
    """Where the listing goes on after a truncated `page`: (start_after, token) for the next `list_page` call."""
    if page.objects:
        start_after = page.objects[-1].key
    if page.token is not None and page.token != token:
        return start_after, page.token
    if page.objects:
        return start_after, None  # a backend without tokens: the last key is the position
    raise RuntimeError(
        f"{store.describe()} answered a listing of {prefix!r} with an empty page marked truncated and no new "
        f"continuation token (after {start_after!r}); the listing cannot go on"
    )


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    keys = [o.key for o in iter_objects(store, prefix)]
    for key in keys:
        store.delete(key)
    return len(keys)


def cached_copy(store: ObjectStore, key: str, cache_dir: Path, expected_size: int | None = None) -> Path:
    """A local copy of `key`, reused when a previous step of the same pod already fetched it.

    `expected_size` (from the batch manifest) makes a copy of an object that was since replaced be fetched again.
    """
    target = cache_dir / join(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    from emilia_store.local import LocalStore  # the backend imports this module

    if isinstance(store, LocalStore):
        src = store.path(key)
        if not src.is_file():
            raise KeyError(key)
        return src  # already on this disk: no copy
    if not target.is_file() or (expected_size is not None and target.stat().st_size != expected_size):
        tmp = target.with_name(_TMP_PREFIX + target.name)
        store.get_file(key, tmp)
        os.replace(tmp, target)
    return target
