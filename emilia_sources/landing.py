"""Landing downloads in raw_audio/: derived keys, sidecars, and the dedupe markers shared by every source.

An episode lands in this order: the audio (complete, downloaded to a local temporary file first), its `.json`
sidecar, then the dedupe markers. The raw-audio sensor only batches audio keys, and a re-run that finds no marker
simply lands the same key again, so a crash at any point leaves nothing partial and nothing twice.

Keys are derived from hashes (`<sha256(url)[:16]>.<ext>`) under `raw_audio/<language>/<source_id>/`: a GUID or a
title never becomes part of a key, so no feed can write outside its prefix.

Dedupe markers (`sources/_seen/<kind>/<sha256(value)[:24]>.json`, each naming the landed key):

- `url`: the enclosure or video URL, across every source (a syndicated episode is fetched once);
- `sha256`: the audio's content, across every source (the same file behind another URL lands once);
- `feed-guid`: a GUID *within one source*. GUIDs are only unique per feed in practice ("1", "ep-12"), and feedparser
  turns a GUID without `isPermaLink="false"` into a URL on the feed's host, so two shows in one folder of a host
  that both number their episodes from 1 would otherwise collide. Markers of the older kind `guid` (unscoped) are
  still honoured, but only for the source whose folder their key is in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emilia_pipe.keys import join, safe_language, slug
from emilia_store import ObjectStore

SEEN_PREFIX = "sources/_seen/"


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def source_id_for(url: str, kind: str) -> str:
    """Stable partition key of a feed or channel: `<kind>-<sha256(url)[:12]>`."""
    return f"{kind}-{hashlib.sha256(url.strip().encode()).hexdigest()[:12]}"


def raw_key(raw_prefix: str, language: str | None, source_id: str, url: str, ext: str) -> str:
    ext = slug(ext.lstrip(".").lower(), 8)
    return join(raw_prefix, safe_language(language), slug(source_id), f"{url_hash(url)}.{ext}")


def _marker(kind: str, value: str) -> str:
    return f"{SEEN_PREFIX}{kind}/{hashlib.sha256(value.encode('utf-8')).hexdigest()[:24]}.json"


def _scoped_guid(source_id: str, guid: str) -> str:
    return f"{source_id}\n{guid}"


def _marked_key(store: ObjectStore, kind: str, value: str) -> str | None:
    try:
        return json.loads(store.get_bytes(_marker(kind, value)))["key"]
    except KeyError:
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def already_landed(
    store: ObjectStore,
    url: str | None = None,
    guid: str | None = None,
    source_id: str | None = None,
    content_sha256: str | None = None,
) -> str | None:
    """The key this episode already landed under, else None: by URL or content across every source, by GUID within
    `source_id` (a GUID needs its source)."""
    if guid and not source_id:
        raise ValueError("a GUID is only unique within its feed: already_landed() needs the source_id with it")
    for kind, value in (
        ("url", url),
        ("feed-guid", _scoped_guid(source_id, guid) if guid and source_id else None),
        ("sha256", content_sha256),
    ):
        if value and (key := _marked_key(store, kind, value)):
            return key
    if guid and source_id:
        legacy = _marked_key(store, "guid", guid)  # unscoped, from before GUIDs were per feed
        if legacy and legacy.rsplit("/", 2)[-2:-1] == [slug(source_id)]:
            return legacy
    return None


def mark_seen(
    store: ObjectStore,
    key: str,
    url: str,
    guid: str | None = None,
    source_id: str | None = None,
    content_sha256: str | None = None,
) -> None:
    """Dedupe markers pointing at `key` (also used for a duplicate that was not landed again, so it is not fetched
    again either)."""
    if guid and not source_id:
        raise ValueError("a GUID is only unique within its feed: mark_seen() needs the source_id with it")
    marker = json.dumps({"key": key, "url": url}).encode()
    store.put_bytes(_marker("url", url), marker)
    if guid and source_id:
        store.put_bytes(_marker("feed-guid", _scoped_guid(source_id, guid)), marker)
    if content_sha256:
        store.put_bytes(_marker("sha256", content_sha256), marker)


def land(
    store: ObjectStore,
    local_path: Path,
    key: str,
    sidecar: dict[str, Any],
    url: str,
    guid: str | None = None,
    source_id: str | None = None,
    content_sha256: str | None = None,
) -> None:
    """Audio first, sidecar second, dedupe markers last."""
    store.put_file(local_path, key)
    store.put_bytes(key.rsplit(".", 1)[0] + ".json", json.dumps(sidecar, ensure_ascii=False, indent=1).encode())
    mark_seen(store, key, url, guid=guid, source_id=source_id, content_sha256=content_sha256)


@dataclass
class Outcome:
    url: str
    status: str  # new | skipped | failed | deferred (failed before, waiting for its next retry)
    key: str | None = None
    reason: str | None = None
    bytes: int = 0
    duration_s: float | None = None
    failures: int = 0  # failed and deferred: how many times this URL has failed so far
    retry_at: str | None = None  # failed and deferred: when the next attempt may happen (ISO 8601, UTC)


@dataclass
class IngestReport:
    source_id: str
    source_url: str
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None  # the source itself failed (feed unreachable, malformed XML, ...)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def new_bytes(self) -> int:
        return sum(o.bytes for o in self.outcomes if o.status == "new")

    @property
    def new_hours(self) -> float:
        return sum(o.duration_s or 0.0 for o in self.outcomes if o.status == "new") / 3600
