"""Episode batches: grouping raw audio into manifests, and the incremental scan that finds new raw audio.

No Dagster here: the sensor wraps `scan_tick`, the assets read manifests. A batch is the unit of work (one
partition, one run, one GPU pod); see DESIGN.md for why partitions are batches, not episodes.

The scan walks `raw_audio/` in key order a bounded number of list pages per tick, carrying its position in the
cursor, so a bucket of millions of objects never makes a tick re-list from the start or time out. Keys under
`raw_audio/<language>/<source>/` are not time-ordered, so a new episode can land *behind* the position: when a walk
(a "sweep") reaches the end, the next one starts again from the beginning, but only objects modified since the
previous sweep began are candidates, and those already in a recent manifest are skipped. Every object is therefore
batched in the first sweep that sees it, and exactly once.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import polars as pl

from emilia_pipe.keys import (
    episode_id_for_key,
    is_audio_key,
    language_of_raw_key,
    short_hash,
    source_of_raw_key,
)
from emilia_store import ObjectInfo, ObjectStore, iter_objects, read_parquet

MANIFEST_PREFIX = "manifests/batches/"
MANIFEST_SCHEMA = {
    "episode_id": pl.String,
    "audio_key": pl.String,
    "language": pl.String,
    "bytes": pl.Int64,
    "source": pl.String,
    "modified": pl.Float64,
}


@dataclass(frozen=True)
class BatchLimits:
    max_episodes: int = 200
    max_bytes: int = 20 * 2**30  # ~hours of audio: 20 GiB is ~ 350 h of 128 kbps MP3


@dataclass(frozen=True)
class ScanLimits:
    page_size: int = 1000
    max_pages_per_tick: int = 5
    # Slack for clock skew between the sensor's clock and the store's LastModified.
    clock_skew_s: float = 300.0


@dataclass
class ScanCursor:
    sweep: int = 0
    sweep_started: float | None = None  # when the current sweep began (this process's clock)
    since: float | None = None  # candidates are objects modified at/after this; None on the first sweep
    after: str | None = None  # last key listed in the current sweep

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | None) -> ScanCursor:
        return cls(**json.loads(raw)) if raw else cls()


@dataclass
class Batch:
    batch_id: str
    objects: list[ObjectInfo]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)


@dataclass
class TickResult:
    cursor: ScanCursor
    batches: list[Batch]
    pages_listed: int
    keys_listed: list[str] = field(default_factory=list)


def manifest_key(batch_id: str) -> str:
    return f"{MANIFEST_PREFIX}{batch_id}.parquet"


def new_batch_id(objects: list[ObjectInfo], now: float) -> str:
    """Time-ordered (manifests list by creation) and content-addressed (two ticks never clash)."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{short_hash(chr(10).join(o.key for o in objects), 8)}"


def group(objects: list[ObjectInfo], limits: BatchLimits, now: float) -> list[Batch]:
    batches: list[Batch] = []
    current: list[ObjectInfo] = []
    size = 0
    for obj in objects:
        if current and (len(current) >= limits.max_episodes or size + obj.size > limits.max_bytes):
            batches.append(Batch(new_batch_id(current, now), current))
            current, size = [], 0
        current.append(obj)
        size += obj.size
    if current:
        batches.append(Batch(new_batch_id(current, now), current))
    return batches


def manifest_frame(batch: Batch, raw_prefix: str) -> pl.DataFrame:
    rows = [
        {
            "episode_id": episode_id_for_key(o.key),
            "audio_key": o.key,
            "language": language_of_raw_key(o.key, raw_prefix),
            "bytes": o.size,
            "source": source_of_raw_key(o.key, raw_prefix),
            "modified": o.modified,
        }
        for o in batch.objects
    ]
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def read_manifest(store: ObjectStore, batch_id: str) -> pl.DataFrame:
    try:
        return read_parquet(store, manifest_key(batch_id))
    except KeyError:
        raise FileNotFoundError(f"batch {batch_id!r} has no manifest at {manifest_key(batch_id)}") from None


def recent_manifests(store: ObjectStore, since: float | None) -> list[str]:
    """Batch ids whose manifests were created at/after `since` (batch ids sort by creation time)."""
    start_after = None
    if since is not None:
        start_after = MANIFEST_PREFIX + datetime.fromtimestamp(since, UTC).strftime("%Y%m%dT%H%M%SZ")
    return [
        o.key[len(MANIFEST_PREFIX) : -len(".parquet")]
        for o in iter_objects(store, MANIFEST_PREFIX, start_after=start_after)
        if o.key.endswith(".parquet")
    ]


# Manifests are immutable, so their keys are cached per process; bounded, because the code server that runs the
# sensor lives for weeks and only the manifests of the last sweep or two are ever asked for.
_MANIFEST_KEYS_CACHE: OrderedDict[str, frozenset[str]] = OrderedDict()
_MANIFEST_KEYS_CACHE_SIZE = 2048


def batched_keys(store: ObjectStore, batch_ids: list[str]) -> set[str]:
    """Audio keys already in these batches."""
    out: set[str] = set()
    for bid in batch_ids:
        cache_key = f"{store.describe()}|{bid}"
        if cache_key in _MANIFEST_KEYS_CACHE:
            _MANIFEST_KEYS_CACHE.move_to_end(cache_key)
        else:
            frame = read_parquet(store, manifest_key(bid))
            _MANIFEST_KEYS_CACHE[cache_key] = frozenset(frame["audio_key"].to_list())
            if len(_MANIFEST_KEYS_CACHE) > _MANIFEST_KEYS_CACHE_SIZE:
                _MANIFEST_KEYS_CACHE.popitem(last=False)
        out |= _MANIFEST_KEYS_CACHE[cache_key]
    return out


def scan_tick(
    store: ObjectStore,
    cursor: ScanCursor,
    raw_prefix: str,
    already_batched: Callable[[float], set[str]],
    scan: ScanLimits = ScanLimits(),
    limits: BatchLimits = BatchLimits(),
    now: Callable[[], float] = time.time,
) -> TickResult:
    """List at most `scan.max_pages_per_tick` pages from the cursor, and group the new audio into batches.

    `already_batched(t)` returns the audio keys of manifests written at/after time `t`. The caller writes the
    manifests, then commits the returned cursor.
    """
    cur = ScanCursor(**asdict(cursor))
    if cur.after is None:
        cur.sweep_started = now()
    assert cur.sweep_started is not None
    # Dedupe against manifests written since the previous sweep began (objects changed during it may have been
    # batched then) and, on the first sweep, since this one began (a tick that wrote manifests but failed before
    # its cursor was committed is retried over the same keys).
    window = cur.since if cur.since is not None else cur.sweep_started
    skip = already_batched(window - scan.clock_skew_s)
    candidates: list[ObjectInfo] = []
    listed: list[str] = []
    pages = 0
    reached_end = False
    while pages < scan.max_pages_per_tick:
        page = store.list_page(raw_prefix, start_after=cur.after, max_keys=scan.page_size)
        pages += 1
        for obj in page.objects:
            listed.append(obj.key)
            if not is_audio_key(obj.key) or obj.key in skip:
                continue
            if cur.since is not None and obj.modified < cur.since:
                continue
            candidates.append(obj)
        if page.objects:
            cur.after = page.objects[-1].key
        if not page.truncated:
            reached_end = True
            break
    batches = group(candidates, limits, now()) if candidates else []
    if reached_end:
        cur = ScanCursor(sweep=cur.sweep + 1, since=cur.sweep_started - scan.clock_skew_s)
    return TickResult(cur, batches, pages, listed)
