"""The embedded default store: a directory on disk, listed in the same byte order as S3."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from emilia_pipe.keys import join
from emilia_store.base import _TMP_PREFIX, ListPage, ObjectInfo, PreconditionFailed


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    # The local ETag: size and modification time (ns) in hex. Any rewrite of the file changes it, as an S3 PUT
    # changes the ETag of changed content.
    return ObjectInfo(key, st.st_size, max(st.st_mtime, st.st_ctime), f"{st.st_size:x}-{st.st_mtime_ns:x}")


def _token(data: bytes) -> str:
    """The compare-and-swap token of a local object: its content's MD5, as S3's ETag of a single-part PUT."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class LocalStore:
    """A directory on disk. Listing is lexical over the whole tree below the prefix, like S3's ListObjectsV2."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"local:{self.root}"

    def path(self, key: str) -> Path:
        return self.root / join(key)

    def list_page(
        self, prefix: str, start_after: str | None = None, max_keys: int = 1000, token: str | None = None
    ) -> ListPage:
        # A local token is simply the last key of the previous page.
        if token is not None:
            start_after = token
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
                return ListPage(out, True, out[-1].key if out else start_after)
            out.append(_info(key, (self.root / key).stat()))
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

    def head(self, key: str) -> ObjectInfo:
        path = self.path(key)
        if not path.is_file():
            raise KeyError(key)
        return _info(join(key), path.stat())

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, _token(data)

    def put_if(self, key: str, data: bytes, token: str | None) -> str:
        """Compare-and-swap under an exclusive lock on a hidden file beside the object (processes of this host)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = target.with_name(f"{_TMP_PREFIX}lock-{target.name}")
        with open(lock, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                current = _token(target.read_bytes()) if target.is_file() else None
                if current != token:
                    raise PreconditionFailed(f"{self.describe()}: {key} is at {current or 'absent'}, "
                                             f"expected {token or 'absent'}")
                self.put_bytes(key, data)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return _token(data)

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
