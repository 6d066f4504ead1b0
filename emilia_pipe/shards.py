"""WebDataset tar shards in the released Emilia format: `<key>.mp3` + `<key>.json` per sample.

Shards are deterministic: samples in key order, fixed tar headers (mtime 0, uid/gid 0, no user names), so rebuilding
a batch gives byte-identical tars and a re-upload can be skipped by checksum.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    key: str  # no dots: WebDataset splits the member name at the first dot
    mp3: bytes
    meta: dict[str, Any]


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int, max_samples: int) -> list[list[str]]:
    """Split keys (in the order given) into shards of at most `max_bytes` of payload and `max_samples` samples."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for key, n in sizes:
        if current and (size + n > max_bytes or len(current) >= max_samples):
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += n
    if current:
        shards.append(current)
    return shards


def write_shard(path: Path, samples: Iterator[Sample]) -> int:
    """Write one tar; returns the number of samples."""
    n = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            if "." in sample.key or "/" in sample.key:
                raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
            meta = json.dumps(sample.meta, ensure_ascii=False, sort_keys=True).encode()
            tar.addfile(*_member(f"{sample.key}.mp3", sample.mp3))
            tar.addfile(*_member(f"{sample.key}.json", meta))
            n += 1
    return n
