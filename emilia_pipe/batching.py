"""Episode batches: grouping raw audio into manifests, and the incremental scan that finds new raw audio.

No Dagster here: the sensor wraps `scan_tick`, the assets read manifests. A batch is the unit of work (one
partition, one run, one GPU pod); docs/batch-runs.md says why partitions are batches, not episodes.

The scan walks `raw_audio/` in key order a bounded number of list pages per tick, carrying its position in the
cursor, so a bucket of millions of objects never makes a tick re-list from the start or time out. Keys under
`raw_audio/<language>/<source>/` are not time-ordered, so a new episode can land *behind* the position: when a walk
(a "sweep") reaches the end, the next one starts again from the beginning, but only objects modified since the
previous sweep began are candidates. Every object is therefore batched in the first sweep that sees it, and once.

What a tick did is written to the store before its manifests, as one *tick record* per tick
(`manifests/scan/<sweep>/t<tick>.json`): the batches it made and the range of keys it walked, with the keys in that
range that are batched and recent enough to be candidates again in the next sweep (the "carry"). Two things read
them, each a bounded number of reads per tick whatever the number of batches in the store:
- a tick whose cursor was never committed (the process died, the daemon lost the result) is retried from the same
  cursor; it finds its own record and replays it instead of batching the same keys again;
- the next sweep walks the same keys in the same order, so it reads the previous sweep's records alongside, a few
  per tick (`ScanCursor.prev_next` is its position among them), and skips the carried keys, each at the version
  it was batched at: an object whose content changed since (a new ETag, or a new size or mtime locally) is batched
  again, as a new episode (`episode_id_for_key` covers the version).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import polars as pl

from emilia_pipe.keys import (
    episode_id_for_key,
    is_audio_key,
    language_of_raw_key,
    short_hash,
    source_of_raw_key,
)
from emilia_store import ObjectInfo, ObjectStore, iter_objects, next_position, read_parquet, write_parquet

MANIFEST_PREFIX = "manifests/batches/"
SCAN_PREFIX = "manifests/scan/"
REPROCESS_PREFIX = "manifests/reprocess/"  # requests for re-processing, adopted by the raw-audio sensor
MANIFEST_SCHEMA = {
    "episode_id": pl.String,
    "audio_key": pl.String,
    "language": pl.String,
    "bytes": pl.Int64,
    "source": pl.String,
    "modified": pl.Float64,
    "version": pl.String,  # ObjectInfo.version: part of the episode id; the release keeps the newest per key
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
    # Records of the previous sweep read per tick. A tick's keys span one or two of them when the page settings are
    # unchanged; when they span more (raw audio deleted, smaller pages), the tick stops where the records read end.
    max_records_per_tick: int = 8


@dataclass
class ScanCursor:
    sweep: int = 0
    sweep_started: float | None = None  # when the current sweep began (this process's clock)
    since: float | None = None  # candidates are objects modified at/after this; None on the first sweep
    after: str | None = None  # last key listed in the current sweep
    # The store's continuation, kept only when the last page listed was empty but truncated (None: go on from `after`)
    token: str | None = None
    tick: int = 0  # ticks of this sweep so far; names the next tick's record
    prev_sweep: str | None = None  # id of the previous sweep, whose records say what it batched
    prev_next: int = 0  # the previous sweep's first record that may still cover keys after `after`
    # Sweeps left that also dedupe against every manifest written since `since`, as the scan did before tick
    # records existed: a cursor written then has no records behind it for the sweep in progress or the next one.
    legacy_sweeps: int = 0

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | None) -> ScanCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"raw-audio sensor cursor has unknown fields {sorted(unknown)}: {raw[:200]}")
        cursor = cls(**data)
        if "tick" not in data:  # written before tick records
            cursor.legacy_sweeps = 2
        return cursor

    @property
    def sweep_id(self) -> str:
        assert self.sweep_started is not None
        return f"{_stamp(self.sweep_started)}-{self.sweep:06d}"


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
    # The batches are those of an earlier evaluation of the same tick whose cursor was never committed (their
    # manifests are in the store; their partitions may be missing).
    replayed: bool = False


@dataclass
class TickRecord:
    """What one tick did; written before its manifests (see the module docstring)."""

    start_cursor: str  # the cursor the tick started from: a retry starts from the same one
    start: str | None  # the tick walked the keys after this one (None: from the beginning) ...
    end: str | None  # ... up to and including this one (None: to the end)
    # Keys in that range batched by now and modified at/after the next sweep's `since`, each as [key, version]: the
    # next sweep skips that version only, so content that changes under a batched key is batched again. (A bare key,
    # from a record written before versions, skips the key whatever its version.)
    carry: list[Any]
    batches: list[Batch]
    cursor: str  # the cursor the tick returned

    def dumps(self) -> bytes:
        doc = asdict(self)
        doc["batches"] = [
            {"id": b.batch_id, "objects": [[o.key, o.size, o.modified, o.etag] for o in b.objects]}
            for b in self.batches
        ]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes) -> TickRecord:
        doc = json.loads(data)
        doc["batches"] = [Batch(b["id"], [ObjectInfo(*o) for o in b["objects"]]) for b in doc["batches"]]
        return cls(**doc)


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")


def manifest_key(batch_id: str) -> str:
    return f"{MANIFEST_PREFIX}{batch_id}.parquet"


def tick_record_key(sweep_id: str, tick: int) -> str:
    return f"{SCAN_PREFIX}{sweep_id}/t{tick:08d}.json"


def new_batch_id(objects: list[ObjectInfo], now: float) -> str:
    """Time-ordered (manifests list by creation) and content-addressed (two ticks never clash)."""
    return f"{_stamp(now)}-{short_hash(chr(10).join(o.key for o in objects), 8)}"


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
            "episode_id": episode_id_for_key(o.key, o.version),
            "audio_key": o.key,
            "language": language_of_raw_key(o.key, raw_prefix),
            "bytes": o.size,
            "source": source_of_raw_key(o.key, raw_prefix),
            "modified": o.modified,
            "version": o.version,
        }
        for o in batch.objects
    ]
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)


def read_manifest(store: ObjectStore, batch_id: str) -> pl.DataFrame:
    try:
        return read_parquet(store, manifest_key(batch_id))
    except KeyError:
        raise FileNotFoundError(f"batch {batch_id!r} has no manifest at {manifest_key(batch_id)}") from None


def request_reprocess(store: ObjectStore, keys: list[str], raw_prefix: str, processed_prefix: str,
                      now: float | None = None) -> Batch:
    """Re-process these raw-audio objects on purpose (new models, new rules): a new batch of them, as they are now.

    Each object is listed as its current version, so its episode id is the one it already has when its content did
    not change; its completion marker is removed, so the batch runner processes it again instead of resuming it,
    and the new batch, being newer, replaces the episode's segments in the release (emilia_publish.release) rather
    than adding a second copy. The raw-audio sensor adopts the batch (a partition and a probe run) on its next tick.
    """
    from emilia_store.layout import episode_done_key

    if not keys:
        raise ValueError("nothing to re-process: give at least one raw-audio key")
    objects = []
    for key in sorted(set(keys)):
        try:
            objects.append(store.head(key))
        except KeyError:
            raise FileNotFoundError(f"{store.describe()}: {key} is not in the store") from None
        if not is_audio_key(key):
            raise ValueError(f"{key} is not an audio file")
    batch = Batch(new_batch_id(objects, time.time() if now is None else now), objects)
    frame = manifest_frame(batch, raw_prefix)
    write_parquet(store, manifest_key(batch.batch_id), frame)
    for episode_id in frame["episode_id"].to_list():
        store.delete(episode_done_key(processed_prefix, episode_id))
    store.put_bytes(f"{REPROCESS_PREFIX}{batch.batch_id}.json", json.dumps({"keys": [o.key for o in objects]}).encode())
    return batch


def reprocess_requests(store: ObjectStore, limit: int = 100) -> list[str]:
    """Batch ids of re-processing requests not adopted yet (oldest first, at most `limit`)."""
    return [o.key[len(REPROCESS_PREFIX):-len(".json")]
            for o in islice(iter_objects(store, REPROCESS_PREFIX, page_size=limit), limit) if o.key.endswith(".json")]


def forget_reprocess_request(store: ObjectStore, batch_id: str) -> None:
    store.delete(f"{REPROCESS_PREFIX}{batch_id}.json")


def recent_manifests(store: ObjectStore, since: float | None) -> list[str]:
    """Batch ids whose manifests were created at/after `since` (batch ids sort by creation time)."""
    start_after = None
    if since is not None:
        start_after = MANIFEST_PREFIX + _stamp(since)
    return [
        o.key[len(MANIFEST_PREFIX) : -len(".parquet")]
        for o in iter_objects(store, MANIFEST_PREFIX, start_after=start_after)
        if o.key.endswith(".parquet")
    ]


def batched_keys(store: ObjectStore, batch_ids: list[str]) -> set[str]:
    """Audio keys in these batches: one read per batch, so only for a cursor from before tick records."""
    out: set[str] = set()
    for bid in batch_ids:
        out.update(read_parquet(store, manifest_key(bid))["audio_key"].to_list())
    return out


def _read_record(store: ObjectStore, key: str) -> TickRecord | None:
    try:
        data = store.get_bytes(key)
    except KeyError:
        return None
    try:
        return TickRecord.loads(data)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{store.describe()}: tick record {key} is not valid: {err}") from None


def _earlier_evaluation(store: ObjectStore, cursor: ScanCursor, now: float, scan: ScanLimits) -> TickRecord | None:
    """The record an earlier evaluation of this very tick left, if its cursor was never committed."""
    if cursor.sweep_started is not None:
        record = _read_record(store, tick_record_key(cursor.sweep_id, cursor.tick))
        return record if record is not None and record.start_cursor == cursor.dumps() else None
    # A sweep that has not started yet (the scan's first tick) gets its id from the clock, so a retry cannot name
    # the earlier evaluation's record: look for a first record of a sweep started within the clock-skew window.
    prefix_after = SCAN_PREFIX + _stamp(now - scan.clock_skew_s)
    suffix = f"-{cursor.sweep:06d}/t{0:08d}.json"
    recent = [o.key for o in islice(iter_objects(store, SCAN_PREFIX, start_after=prefix_after), 1000)]
    for key in reversed([k for k in recent if k.endswith(suffix)]):
        record = _read_record(store, key)
        if record is not None and record.start_cursor == cursor.dumps():
            return record
    return None


def _replay(store: ObjectStore, record: TickRecord, raw_prefix: str) -> TickResult:
    for batch in record.batches:  # the earlier evaluation may have died between its record and its manifests
        if not store.exists(manifest_key(batch.batch_id)):
            write_parquet(store, manifest_key(batch.batch_id), manifest_frame(batch, raw_prefix))
    return TickResult(ScanCursor.loads(record.cursor), record.batches, 0, [], replayed=True)


def _carried(entries: Iterable[Any]) -> Iterable[Any]:
    """A record's carry as set members: (key, version) pairs, or a bare key from a record without versions."""
    return (e if isinstance(e, str) else (e[0], e[1]) for e in entries)


def _previous_carry(
    store: ObjectStore, cursor: ScanCursor, end: str | None, scan: ScanLimits
) -> tuple[set[str], int, str | None]:
    """Keys the previous sweep carried in (cursor.after, end], its next record, and where this tick must stop
    (not None when those keys span more than `scan.max_records_per_tick` records)."""
    prefix = f"{SCAN_PREFIX}{cursor.prev_sweep}/"
    start_after = prefix + f"t{cursor.prev_next - 1:08d}.json" if cursor.prev_next > 0 else None
    limit = scan.max_records_per_tick
    names = [o.key for o in islice(iter_objects(store, prefix, start_after, page_size=limit + 1), limit + 1)]
    carry: set[Any] = set()
    next_record = cursor.prev_next
    last_end: str | None = None
    for i, name in enumerate(names):
        if i == limit:  # every record read ended inside this tick's keys, and more follow
            return carry, next_record, last_end
        record = _read_record(store, name)
        number = int(name[len(prefix) + 1 : -len(".json")])
        if record is None:
            raise ValueError(f"{store.describe()}: tick record {name} was listed but cannot be read")
        if end is not None and record.start is not None and record.start >= end:
            return carry, number, None  # starts after this tick's keys
        carry.update(_carried(record.carry))
        if record.end is None or (end is not None and record.end > end):
            return carry, number, None  # goes on past this tick's keys: read it again next tick
        next_record, last_end = number + 1, record.end
    return carry, next_record, None


def scan_tick(
    store: ObjectStore,
    cursor: ScanCursor,
    raw_prefix: str,
    scan: ScanLimits = ScanLimits(),
    limits: BatchLimits = BatchLimits(),
    now: Callable[[], float] = time.time,
) -> TickResult:
    """List at most `scan.max_pages_per_tick` pages from the cursor, group the new audio into batches, and write the
    tick's record and the batches' manifests. The caller then commits the returned cursor.

    Store calls per tick are bounded by the scan limits and the size of this tick's batches, whatever the number of
    batches, manifests or sweeps before it.
    """
    start_cursor = cursor.dumps()
    earlier = _earlier_evaluation(store, cursor, now(), scan)
    if earlier is not None:
        return _replay(store, earlier, raw_prefix)
    cur = ScanCursor(**asdict(cursor))
    if cur.sweep_started is None:
        cur.sweep_started = now()
    start, sweep_id, tick = cur.after, cur.sweep_id, cur.tick

    objects: list[ObjectInfo] = []
    after, token = cur.after, cur.token
    pages = 0
    reached_end = last_page_empty = False
    while pages < scan.max_pages_per_tick:
        page = store.list_page(raw_prefix, start_after=after, max_keys=scan.page_size, token=token)
        pages += 1
        objects += page.objects
        if not page.truncated:
            reached_end = True
            break
        after, token = next_position(store, raw_prefix, page, after, token)
        last_page_empty = not page.objects
    if not last_page_empty:
        token = None  # the last key says where to go on; the cursor keeps a token only after an empty page
    listed = [o.key for o in objects]

    # Keys the previous sweep batched (or carried) that are recent enough to be candidates again.
    skip: set[Any] = set()  # bare keys (any version) and (key, version) pairs
    next_record = cur.prev_next
    if objects and cur.since is not None and cur.prev_sweep is not None:
        skip, next_record, cut = _previous_carry(store, cur, None if reached_end else after, scan)
        if cut is not None:
            objects = [o for o in objects if o.key <= cut]
            after, token, reached_end = cut, None, False
    if objects and cur.legacy_sweeps > 0:
        window = cur.since if cur.since is not None else cur.sweep_started
        skip |= batched_keys(store, recent_manifests(store, window - scan.clock_skew_s))

    since_next = cur.sweep_started - scan.clock_skew_s
    candidates: list[ObjectInfo] = []
    carry: list[list[str]] = []
    for obj in objects:
        if not is_audio_key(obj.key):
            continue
        if obj.key in skip or (obj.key, obj.version) in skip:
            if obj.modified >= since_next:
                carry.append([obj.key, obj.version])
            continue
        if cur.since is not None and obj.modified < cur.since:
            continue
        candidates.append(obj)
        if obj.modified >= since_next:
            carry.append([obj.key, obj.version])
    batches = group(candidates, limits, now()) if candidates else []

    if reached_end:
        cur = ScanCursor(
            sweep=cur.sweep + 1,
            sweep_started=now(),
            since=since_next,
            prev_sweep=sweep_id,
            legacy_sweeps=max(0, cur.legacy_sweeps - 1),
        )
    else:
        cur.after, cur.token, cur.tick, cur.prev_next = after, token, tick + 1, next_record
    if batches or carry:
        record = TickRecord(start_cursor, start, None if reached_end else after, carry, batches, cur.dumps())
        store.put_bytes(tick_record_key(sweep_id, tick), record.dumps())
    for batch in batches:
        write_parquet(store, manifest_key(batch.batch_id), manifest_frame(batch, raw_prefix))
    return TickResult(cur, batches, pages, listed)
