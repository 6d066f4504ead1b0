"""Landing downloads in raw_audio/: derived keys, sidecars, and the dedupe markers shared by every source.

An episode lands in this order: the audio (complete, downloaded to a local temporary file first), its `.json`
sidecar, then the dedupe markers. The raw-audio sensor only batches audio keys, and a re-run that finds no marker
simply lands the same key again, so a crash at any point leaves nothing partial and nothing twice.

Keys are derived from hashes (`<sha256(url)[:16]>.<ext>`) under `raw_audio/<language>/<source_id>/`: a GUID or a
title never becomes part of a key, so no feed can write outside its prefix.
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


def already_landed(store: ObjectStore, url: str | None = None, guid: str | None = None) -> str | None:
    """The key an enclosure URL or a GUID already landed under (across every source), else None."""
    for kind, value in (("url", url), ("guid", guid)):
        if value:
            try:
                return json.loads(store.get_bytes(_marker(kind, value)))["key"]
            except KeyError:
                continue
    return None


def land(
    store: ObjectStore, local_path: Path, key: str, sidecar: dict[str, Any], url: str, guid: str | None = None
) -> None:
    """Audio first, sidecar second, dedupe markers last."""
    store.put_file(local_path, key)
    store.put_bytes(key.rsplit(".", 1)[0] + ".json", json.dumps(sidecar, ensure_ascii=False, indent=1).encode())
    marker = json.dumps({"key": key, "url": url}).encode()
    store.put_bytes(_marker("url", url), marker)
    if guid:
        store.put_bytes(_marker("guid", guid), marker)


@dataclass
class Outcome:
    url: str
    status: str  # new | skipped | failed
    key: str | None = None
    reason: str | None = None
    bytes: int = 0
    duration_s: float | None = None


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
