"""The batch's two tables: per-episode status and the segment catalogue (what polars queries, what publishing reads).

`processed/_batches/<batch_id>.parquet` holds one row per episode (STATUS_SCHEMA);
`processed/_batches/<batch_id>.segments.parquet` one row per kept segment (SEGMENT_SCHEMA), built from each finished
episode's `all_segments.json`.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from emilia_store.layout import episode_dir

STATUS_SCHEMA = {
    "episode_id": pl.String,
    "audio_key": pl.String,
    "status": pl.String,  # done | resumed | failed
    "error": pl.String,
    "language": pl.String,
    "duration_s": pl.Float64,
    "speech_s": pl.Float64,
    "segments": pl.Int64,
    "wall_s": pl.Float64,
    "attempts": pl.Int64,  # tries it took (a retry follows a worker that died or ran out of memory)
    "worker": pl.String,  # the worker that processed it last ("gpu3/w7", "cpu/w0")
}
SEGMENT_SCHEMA = {
    "id": pl.String,
    "episode_id": pl.String,
    "batch_id": pl.String,
    "source": pl.String,
    "language": pl.String,
    "speaker": pl.String,
    "start": pl.Float64,
    "end": pl.Float64,
    "duration": pl.Float64,
    "text": pl.String,
    "language_probability": pl.Float64,
    "dnsmos_sig": pl.Float64,
    "dnsmos_bak": pl.Float64,
    "dnsmos_ovrl": pl.Float64,
    "mp3_key": pl.String,
    # Provenance (emilia_pipe.provenance), null for episodes processed before it was recorded:
    "model_set": pl.String,  # id of the model-set description in `models`
    "model_kind": pl.String,  # hub | cached | tiny | none (no model stage ran)
    "models": pl.String,  # the model set as JSON: per model its name, revision and sha256
    "code_version": pl.String,
    # From the ingest sidecar next to the raw audio, null when there is none:
    "license": pl.String,
    "source_url": pl.String,
}


def sidecar_license(meta: dict[str, Any] | None) -> str | None:
    """The licence an ingest sidecar states (YouTube's `license`, a feed's `<copyright>`), if any."""
    meta = meta or {}
    value = meta.get("license") or meta.get("copyright") or meta.get("rights")
    text = str(value).strip() if value else ""
    return text or None


def sidecar_url(meta: dict[str, Any] | None) -> str | None:
    """Where the source lives: the feed, or the channel/playlist as registered."""
    meta = meta or {}
    return meta.get("feed_url") or meta.get("source_url") or meta.get("channel_url") or None


def provenance_columns(episode: dict[str, Any]) -> dict[str, Any]:
    """The per-segment provenance and licence columns, from an all_segments.json `episode` block."""
    prov = episode.get("provenance") or {}
    model_set = prov.get("model_set") or {}
    models = {k: v for k, v in model_set.items() if k != "id"}
    side = episode.get("source_metadata")
    return {
        "model_set": model_set.get("id"), "model_kind": model_set.get("kind"),
        "models": json.dumps(models, sort_keys=True) if model_set else None,
        "code_version": prov.get("code_version"),
        "license": sidecar_license(side), "source_url": sidecar_url(side),
    }


def segment_rows(processed_prefix: str, batch_id: str, ep: dict[str, Any], done: dict[str, Any],
                 doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Catalogue rows of one finished episode, from its all_segments.json document."""
    prefix = episode_dir(processed_prefix, done["language"], ep["episode_id"])
    extra = provenance_columns(doc.get("episode") or {})
    rows = []
    for seg in doc["segments"]:
        dnsmos = seg.get("dnsmos") or {}
        rows.append({
            "id": seg["id"], "episode_id": ep["episode_id"], "batch_id": batch_id, "source": ep["source"],
            "language": seg["language"], "speaker": seg["speaker"], "start": seg["start"], "end": seg["end"],
            "duration": seg["duration"], "text": seg.get("text", ""),
            "language_probability": seg.get("language_probability"), "dnsmos_sig": dnsmos.get("sig"),
            "dnsmos_bak": dnsmos.get("bak"), "dnsmos_ovrl": dnsmos.get("ovrl"), "mp3_key": prefix + seg["wav"],
            **extra,
        })
    return rows
