"""One object-store interface, two backends: a local directory (the embedded default) and S3/R2.

The processing code only ever sees `ObjectStore`; the Dagster resource at the bottom picks the backend from config
(`R2_BUCKET` set means S3/R2). Both backends make a write visible only once it is complete (a temporary name then an
atomic rename locally; S3 PUTs are atomic), so a reader never sees half an object, and a key that marks completion
can simply be written last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
from pydantic import Field

from emilia_pipe.keys import join

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # epoch seconds; S3 LastModified, or the later of mtime/ctime locally


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    truncated: bool  # more keys follow after the last one of this page


class ObjectStore(Protocol):
    """What assets and sensors need from storage; keys are `/`-separated and relative to the store's root."""

    def list_page(self, prefix: str, start_after: str | None = None, max_keys: int = 1000) -> ListPage: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def put_file(self, path: Path, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...


def iter_objects(store: ObjectStore, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
    """Every object under `prefix` in key order, one page at a time (for bounded prefixes; sensors page themselves)."""
    while True:
        page = store.list_page(prefix, start_after=start_after)
        yield from page.objects
        if not page.truncated or not page.objects:
            return
        start_after = page.objects[-1].key


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    keys = [o.key for o in iter_objects(store, prefix)]
    for key in keys:
        store.delete(key)
    return len(keys)


class LocalStore:
    """A directory on disk. Listing is lexical over the whole tree below the prefix, like S3's ListObjectsV2."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"local:{self.root}"

    def path(self, key: str) -> Path:
        return self.root / join(key)

    def list_page(self, prefix: str, start_after: str | None = None, max_keys: int = 1000) -> ListPage:
        # Walk only the directories that can hold keys with this prefix, in sorted order, stopping once the page
        # is full: a page costs O(page) stat calls, not O(tree).
        base_dir, _, _ = prefix.rpartition("/")
        top = self.root / join(base_dir) if base_dir else self.root
        out: list[ObjectInfo] = []
        if not top.is_dir():
            return ListPage(out, False)
        for key in self._walk_sorted(top, base_dir, prefix, start_after):
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            if len(out) == max_keys:
                return ListPage(out, True)
            st = (self.root / key).stat()
            out.append(ObjectInfo(key, st.st_size, max(st.st_mtime, st.st_ctime)))
        return ListPage(out, False)

    def _walk_sorted(
        self, directory: Path, rel: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[str]:
        # S3 orders keys by the full string, where "a/b" sorts after "a-c" ('/' > '-'); sorting entries by the key
        # they would produce ("name/" for directories) keeps the two backends in the same order.
        entries = []
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith(_TMP_PREFIX):
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                entries.append((entry.name + ("/" if is_dir else ""), entry.name, is_dir))
        for _, name, is_dir in sorted(entries):
            key = f"{rel}/{name}" if rel else name
            if is_dir:
                below = key + "/"
                if not (below.startswith(prefix) or prefix.startswith(below)):
                    continue  # no key in here can carry the prefix
                if start_after is not None and below < start_after and not start_after.startswith(below):
                    continue  # every key in here sorts before the cursor
                yield from self._walk_sorted(directory / name, key, prefix, start_after)
            else:
                yield key

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # like S3: a key that is only a prefix ("a" of "a/b"), or one below a file, is simply not there
            raise KeyError(key) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the store is read by other tools too
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: Path) -> None:
        src = self.path(key)
        if not src.is_file():
            raise KeyError(key)
        shutil.copyfile(src, path)

    def put_file(self, path: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_file():  # a prefix ("a" of "a/b") or a path below a file names no object: no-op, as on S3
            path.unlink(missing_ok=True)


class S3Store:
    """S3 or R2 through a boto3 client (production builds it with dagster-aws's S3Resource)."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.bucket = bucket
        self.prefix = join(prefix) + "/" if prefix.strip("/") else ""
        # boto3 switches to multipart above the threshold and retries parts on its own.
        self.transfer = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)

    def describe(self) -> str:
        endpoint = getattr(self.client.meta, "endpoint_url", "")
        return f"s3://{self.bucket}/{self.prefix} ({endpoint})"

    def _k(self, key: str) -> str:
        return self.prefix + join(key)

    def list_page(self, prefix: str, start_after: str | None = None, max_keys: int = 1000) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": max_keys}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        resp = self.client.list_objects_v2(**kwargs)
        n = len(self.prefix)
        objects = [
            ObjectInfo(o["Key"][n:], int(o["Size"]), o["LastModified"].timestamp())
            for o in resp.get("Contents", [])
        ]
        return ListPage(objects, bool(resp.get("IsTruncated")))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self._k(key), str(path), Config=self.transfer)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise KeyError(key) from None
            raise

    def put_file(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))


class ObjectStoreResource(dg.ConfigurableResource):
    """The platform's storage. With `bucket` empty it is a local directory (`local_root`); otherwise S3/R2.

    Credentials are read from the environment through `dg.EnvVar` in `definitions.py`, so they never appear in run
    config shown in the UI or in metadata.
    """

    local_root: str = Field(default="data", description="Directory of the local store (used when bucket is empty).")
    bucket: str = Field(default="", description="S3/R2 bucket (R2_BUCKET); empty selects the local store.")
    endpoint_url: str = Field(default="", description="R2_ENDPOINT_URL; empty for AWS S3.")
    access_key_id: str = Field(default="", description="R2_ACCESS_KEY_ID")
    secret_access_key: str = Field(default="", description="R2_SECRET_ACCESS_KEY")
    region_name: str = Field(default="auto", description="'auto' for R2; an AWS region for S3.")
    key_prefix: str = Field(default="", description="Prefix inside the bucket under which the layout lives.")
    raw_prefix: str = Field(default="raw_audio/", description="RAW_AUDIO_PREFIX: where raw episodes land.")
    processed_prefix: str = Field(default="processed/", description="PROCESSED_PREFIX: where segments go.")

    def open(self) -> ObjectStore:
        if not self.bucket:
            return LocalStore(self.local_root)
        from dagster_aws.s3 import S3Resource

        s3 = S3Resource(
            endpoint_url=self.endpoint_url or None,
            aws_access_key_id=self.access_key_id or None,
            aws_secret_access_key=self.secret_access_key or None,
            region_name=self.region_name or None,
            max_attempts=5,
        )
        return S3Store(s3.get_client(), self.bucket, self.key_prefix)


def cached_copy(store: ObjectStore, key: str, cache_dir: Path, expected_size: int | None = None) -> Path:
    """A local copy of `key`, reused when a previous step of the same pod already fetched it.

    `expected_size` (from the batch manifest) makes a copy of an object that was since replaced be fetched again.
    """
    target = cache_dir / join(key)
    target.parent.mkdir(parents=True, exist_ok=True)
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
