"""Processed batches written straight into a store (manifest, status table, catalogue, segment MP3s), as the batch
runner leaves them, so the release writer can be driven without running the pipe; and a store that counts reads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import polars as pl

from emilia_pipe.batching import MANIFEST_SCHEMA, manifest_key
from emilia_pipe.catalogue import SEGMENT_SCHEMA, STATUS_SCHEMA
from emilia_pipe.export import encode_mp3
from emilia_pipe.keys import episode_id_for_key, segment_name
from emilia_store import LocalStore, write_parquet
from emilia_store.layout import batch_segments_key, batch_status_key, episode_dir

TINY_MODELS = {"kind": "tiny", "models": {"whisper": {"name": "whisper", "revision": None, "sha256": "ab" * 32}}}
HUB_MODELS = {"kind": "hub", "models": {"whisper": {"name": "large-v3", "revision": "unpinned", "sha256": None}}}
# The catalogue and manifest columns the release reads besides the runner's, typed here as well, so that the helper
# also writes batches for a checkout from before them (to show a new test failing there).
EXTRA_SEGMENT_COLUMNS = {"model_set": pl.String, "model_kind": pl.String, "models": pl.String,
                         "code_version": pl.String, "license": pl.String, "source_url": pl.String}


def model_set_id(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


@cache
def tone(seconds: float, freq: float) -> bytes:
    t = np.arange(int(24_000 * seconds)) / 24_000
    return encode_mp3((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 24_000)


@dataclass
class Ep:
    """One raw object's episode in a fabricated batch."""

    audio_key: str
    version: str | None = "v1"  # None: a manifest from before versions (the id of the key alone)
    modified: float = 1000.0
    segments: int = 2
    freq: float = 440.0  # the tone of its segments: two versions of an object sound different
    language: str = "en"
    models: dict[str, Any] = field(default_factory=lambda: HUB_MODELS)
    license: str | None = "cc-by-4.0"

    @property
    def episode_id(self) -> str:
        return episode_id_for_key(self.audio_key) if self.version is None else episode_id_for_key(self.audio_key,
                                                                                                  self.version)


def batch_id(n: int) -> str:
    """Batch ids sort by creation, as the scan makes them."""
    return f"20260101T{n // 3600:02d}{n // 60 % 60:02d}{n % 60:02d}Z-{n:08x}"


def fabricate_batch(store: LocalStore, bid: str, episodes: list[Ep], failed: tuple[str, ...] = (),
                    processed_prefix: str = "processed/") -> None:
    """Write what processing `episodes` in batch `bid` leaves in the store (failed audio keys: no segments)."""
    manifest, status, rows = [], [], []
    for ep in episodes:
        eid = ep.episode_id
        source = ep.audio_key.split("/")[-2]
        manifest.append({"episode_id": eid, "audio_key": ep.audio_key, "language": ep.language, "bytes": 1000,
                         "source": source, "modified": ep.modified, "version": ep.version})
        ok = ep.audio_key not in failed
        status.append({"episode_id": eid, "audio_key": ep.audio_key, "status": "done" if ok else "failed",
                       "error": None if ok else "broken", "language": ep.language, "duration_s": 60.0,
                       "speech_s": 10.0, "segments": ep.segments if ok else 0, "wall_s": 1.0, "attempts": 1,
                       "worker": "cpu/w0"})
        if not ok:
            continue
        prefix = episode_dir(processed_prefix, ep.language, eid)
        for i in range(ep.segments):
            sid = segment_name(eid, i)
            duration = 3.0 + i
            store.put_bytes(f"{prefix}{sid}.mp3", tone(duration, ep.freq))
            rows.append({
                "id": sid, "episode_id": eid, "batch_id": bid, "source": source, "language": ep.language,
                "speaker": f"{eid}_S{i % 2:02d}", "start": 10.0 * i, "end": 10.0 * i + duration,
                "duration": duration, "text": f"text {i} of {eid}", "language_probability": 0.99,
                "dnsmos_sig": 3.5, "dnsmos_bak": 3.9, "dnsmos_ovrl": 3.0 + 0.25 * i, "mp3_key": f"{prefix}{sid}.mp3",
                "model_set": model_set_id(ep.models), "model_kind": ep.models["kind"],
                "models": json.dumps(ep.models, sort_keys=True), "code_version": "git:test",
                "license": ep.license, "source_url": f"https://example.org/{source}.xml",
            })
    write_parquet(store, manifest_key(bid), pl.DataFrame(manifest, schema={**MANIFEST_SCHEMA, "version": pl.String}))
    write_parquet(store, batch_status_key(processed_prefix, bid), pl.DataFrame(status, schema=STATUS_SCHEMA))
    write_parquet(store, batch_segments_key(processed_prefix, bid),
                  pl.DataFrame(rows, schema={**SEGMENT_SCHEMA, **EXTRA_SEGMENT_COLUMNS}))


class CountingStore(LocalStore):
    """A real LocalStore that counts the reads made through it (calls and bytes)."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.reset()

    def reset(self) -> None:
        self.reads: dict[str, int] = {}
        self.read_bytes = 0

    def _count(self, what: str, n: int = 0) -> None:
        self.reads[what] = self.reads.get(what, 0) + 1
        self.read_bytes += n

    def list_page(self, prefix, start_after=None, max_keys=1000, token=None):
        page = super().list_page(prefix, start_after, max_keys, token)
        self._count("list_page", 0)
        return page

    def get_bytes(self, key):  # get_versioned reads through here too
        try:
            data = super().get_bytes(key)
        except KeyError:
            self._count("get_bytes")
            raise
        self._count("get_bytes", len(data))
        return data

    def get_file(self, key, path):
        super().get_file(key, path)
        self._count("get_file", path.stat().st_size)

    def head(self, key):
        self._count("head")
        return super().head(key)

    def exists(self, key):
        self._count("exists")
        return super().exists(key)
