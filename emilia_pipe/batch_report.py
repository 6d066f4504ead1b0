"""What an operator needs to know about one batch, in a small JSON document (no Dagster).

Computed from the batch's status table and segment catalogue, plus the per-episode `stage_seconds` of each episode's
`all_segments.json` and where this run's workers ran each stage. The runner writes it next to the status table when
the batch ends (`processed/_batches/<batch_id>.summary.json`); `processed_segments` turns it into metadata, and the
dataset report (`emilia_publish.dataset_report`) adds the summaries of all batches up, so it never reads a segment
catalogue. Its size depends on languages, failure reasons and stages, not on the number of segments:

- hours in (raw audio of every episode whose duration is known) and out (audio in kept segments), segments;
- per language (of the segments): episodes, segments, hours, speakers; per language of the episodes: hours in;
- speakers: distinct speaker labels per episode, summed (per language: per episode and language, summed);
- DNSMOS (OVRL, SIG, BAK): mean and p10/p50/p90 of the batch's segments (exact), and sparse histograms at 0.01
  resolution, the release summary's format (`emilia_publish.summary`), which the dataset report merges;
- failures by reason (the error without the object key and detail: "empty file", "truncated", "upload failed",
  the exception type of a pipe error, "worker killed by SIGKILL", ...);
- seconds per stage, summed over the episodes' `all_segments.json` (done and resumed alike), with the device each
  stage ran on in this run's workers (`cuda`, `cpu`; "unknown" when no worker ran, a batch that was only resumed):
  stage seconds on that device, not exclusive GPU time (workers share a GPU, and CPU threads overlap the models);
- this run: wall seconds, audio hours processed, audio hours per wall hour.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from emilia_store import ObjectStore, read_parquet
from emilia_store.layout import batch_segments_key, batch_status_key, batch_summary_key

FORMAT = 1
DNSMOS_METRICS = ("ovrl", "sig", "bak")
PERCENTILES = (10, 50, 90)
STAGE_ORDER = ("standardize", "separate", "diarize", "vad", "asr", "dnsmos", "export")  # emilia_pipe.pipeline's
CPU_STAGES = ("standardize", "vad", "export")  # never on a GPU (Silero VAD runs on CPU threads)
CENTI = 100  # histogram resolution: 0.01 (DNSMOS points, seconds); the release summary uses the same
_REASON_END = re.compile(r":| \(| while |, ")


def failure_reason(error: str | None, audio_key: str | None = None) -> str:
    """The kind of a failure, from a status-table error (which starts with the object key and ends with detail)."""
    text = (error or "").strip()
    if audio_key and text.startswith(f"{audio_key}: "):
        text = text[len(audio_key) + 2:]
    head = _REASON_END.split(text, maxsplit=1)[0].strip()
    return (head[:80] or "unknown") if text else "unknown"


def stage_devices(worker_devices: Mapping[str, Mapping[str, str]], stages: Iterable[str]) -> dict[str, str]:
    """Per stage, the devices this run's workers ran it on ("cuda", "cpu", "cpu, cuda"), read back from the loaded
    runtimes (`stage_devices` of the run); the CPU stages are "cpu"; "unknown" when no worker reported the stage."""
    out: dict[str, str] = {}
    for stage in stages:
        if stage in CPU_STAGES:
            out[stage] = "cpu"
            continue
        seen = {str(d.get(stage)).split(":")[0] for d in worker_devices.values() if d.get(stage)}
        out[stage] = ", ".join(sorted(seen)) or "unknown"
    return out


def histogram(values: Iterable[float | None]) -> dict[str, int]:
    """Sparse counts at 0.01 resolution (the release summary's histogram format)."""
    out: dict[str, int] = {}
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        k = str(int(round(v * CENTI)))
        out[k] = out.get(k, 0) + 1
    return out


def _stats(values: pl.Series) -> dict[str, float | int] | None:
    values = values.drop_nulls().drop_nans()
    if values.is_empty():
        return None
    out: dict[str, float | int] = {"n": values.len(), "mean": round(float(values.mean()), 4)}
    for p in PERCENTILES:
        out[f"p{p}"] = round(float(values.quantile(p / 100, interpolation="linear")), 4)
    return out


def stage_rank(item: tuple[str, Any]) -> tuple[int, str]:
    """Pipeline order, unknown stages last."""
    return (STAGE_ORDER.index(item[0]) if item[0] in STAGE_ORDER else len(STAGE_ORDER), item[0])


def _speakers(frame: pl.DataFrame, by: list[str]) -> int:
    """Distinct speaker labels per group, summed."""
    if frame.is_empty():
        return 0
    return int(frame.group_by(by).agg(pl.col("speaker").n_unique())["speaker"].sum())


def batch_summary(
    batch_id: str,
    status: pl.DataFrame,
    segments: pl.DataFrame,
    episode_stage_seconds: Mapping[str, Mapping[str, float]] | None = None,
    worker_devices: Mapping[str, Mapping[str, str]] | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    """The batch's summary (see the module docstring).

    Args:
        status: the batch's status table (`emilia_pipe.catalogue.STATUS_SCHEMA`).
        segments: its catalogue (`SEGMENT_SCHEMA`).
        episode_stage_seconds: per episode id, `stage_seconds` from its `all_segments.json`; None when unknown (a
            summary rebuilt from the tables alone), which the summary says (`stage_seconds: null`).
        worker_devices: this run's `stage_devices` per worker.
        wall_s: this run's wall time; None for a summary rebuilt after the fact.
    """
    by_status = {s: status.filter(pl.col("status") == s).height for s in ("done", "resumed", "failed")}
    seg_s = segments["duration"].fill_null(0)
    languages: dict[str, dict[str, Any]] = {}
    for (language,), g in segments.with_columns(pl.col("language").fill_null("und")).group_by(["language"]):
        languages[str(language)] = {
            "episodes": g["episode_id"].n_unique(), "segments": g.height,
            "hours": round(float(g["duration"].fill_null(0).sum()) / 3600, 6),
            "speakers": _speakers(g, ["episode_id"]), "hours_in": 0.0,
        }
    finished = status.filter(pl.col("status").is_in(["done", "resumed"]))
    for (language,), g in finished.with_columns(pl.col("language").fill_null("und")).group_by(["language"]):
        entry = languages.setdefault(str(language), {"episodes": 0, "segments": 0, "hours": 0.0, "speakers": 0})
        entry["hours_in"] = round(float(g["duration_s"].fill_null(0).sum()) / 3600, 6)
    failures: dict[str, int] = {}
    for row in status.filter(pl.col("status") == "failed").iter_rows(named=True):
        reason = failure_reason(row["error"], row["audio_key"])
        failures[reason] = failures.get(reason, 0) + 1
    stage_seconds: dict[str, float] | None = None
    if episode_stage_seconds is not None:
        stage_seconds = {}
        for per_episode in episode_stage_seconds.values():
            for stage, s in per_episode.items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + float(s)
        stage_seconds = {k: round(v, 3) for k, v in sorted(stage_seconds.items(), key=stage_rank)}
    processed_h = float(status.filter(pl.col("status") == "done")["duration_s"].fill_null(0).sum()) / 3600
    run: dict[str, Any] | None = None
    if wall_s is not None:
        run = {"wall_s": round(wall_s, 3), "processed_hours": round(processed_h, 6),
               "audio_hours_per_wall_hour": round(processed_h * 3600 / wall_s, 3) if wall_s > 0 else 0.0}
    return {
        "format": FORMAT,
        "batch_id": batch_id,
        "episodes": status.height,
        **by_status,
        "segments": segments.height,
        "hours_in": round(float(status["duration_s"].fill_null(0).sum()) / 3600, 6),
        "hours_out": round(float(seg_s.sum()) / 3600, 6),
        "speakers": _speakers(segments, ["episode_id"]),
        "languages": dict(sorted(languages.items())),
        "dnsmos": {m: _stats(segments[f"dnsmos_{m}"]) for m in DNSMOS_METRICS},
        "dnsmos_hist": {m: histogram(segments[f"dnsmos_{m}"].to_list()) for m in DNSMOS_METRICS},
        "duration_hist": histogram(segments["duration"].to_list()),
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "stage_seconds": stage_seconds,
        "stage_devices": stage_devices(worker_devices or {}, stage_seconds or {}) if stage_seconds else {},
        "run": run,
    }


def write_summary(store: ObjectStore, processed_prefix: str, summary: Mapping[str, Any]) -> str:
    """Writes the summary next to the status table; returns its key."""
    key = batch_summary_key(processed_prefix, summary["batch_id"])
    store.put_bytes(key, json.dumps(summary, sort_keys=True, separators=(",", ":")).encode())
    return key


def read_summary(store: ObjectStore, processed_prefix: str, batch_id: str) -> dict[str, Any] | None:
    """The batch's summary; None when it has none (a batch processed before summaries were written)."""
    key = batch_summary_key(processed_prefix, batch_id)
    try:
        data = store.get_bytes(key)
    except KeyError:
        return None
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise ValueError(f"{key}: the batch summary is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("batch_id") != batch_id:
        raise ValueError(f"{key}: not a batch summary of format {FORMAT} for batch {batch_id}")
    return doc


def summary_from_tables(store: ObjectStore, processed_prefix: str, batch_id: str) -> dict[str, Any]:
    """The summary of a batch that has none, from its status table and catalogue alone (no stage seconds, no run
    figures: the episodes' `all_segments.json` are not read). KeyError when the batch has no status table."""
    status = read_parquet(store, batch_status_key(processed_prefix, batch_id))
    try:
        segments = read_parquet(store, batch_segments_key(processed_prefix, batch_id))
    except KeyError:  # the run died before writing it: no segments are catalogued
        from emilia_pipe.catalogue import SEGMENT_SCHEMA

        segments = pl.DataFrame(schema=SEGMENT_SCHEMA)
    return batch_summary(batch_id, status, segments)


def markdown(summary: Mapping[str, Any]) -> str:
    """One table of the batch's figures, then its languages, DNSMOS, failures and stages (for the UI)."""
    run = summary.get("run") or {}
    rate = run.get("audio_hours_per_wall_hour")
    lines = [
        "| episodes | done | resumed | failed | hours in | hours out | segments | speakers | audio h / wall h |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary['episodes']} | {summary['done']} | {summary['resumed']} | {summary['failed']} "
        f"| {summary['hours_in']:.3f} | {summary['hours_out']:.3f} | {summary['segments']} | {summary['speakers']} "
        f"| {'' if rate is None else f'{rate:.1f}'} |",
        "",
        "| language | episodes | segments | hours in | hours out | speakers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for lang, e in summary["languages"].items():
        lines.append(f"| {lang} | {e['episodes']} | {e['segments']} | {e.get('hours_in', 0.0):.3f} "
                     f"| {e['hours']:.3f} | {e['speakers']} |")
    lines += ["", "| DNSMOS | n | mean | p10 | p50 | p90 |", "|---|---:|---:|---:|---:|---:|"]
    for metric in DNSMOS_METRICS:
        st = summary["dnsmos"].get(metric)
        if st:
            lines.append(f"| {metric.upper()} | {st['n']} | {st['mean']:.3f} | {st['p10']:.3f} | {st['p50']:.3f} "
                         f"| {st['p90']:.3f} |")
    if summary["failures"]:
        lines += ["", "| failure | episodes |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in summary["failures"].items()]
    if summary.get("stage_seconds"):
        devices = summary.get("stage_devices") or {}
        lines += ["", "| stage | seconds (all episodes) | ran on |", "|---|---:|---|"]
        lines += [f"| {stage} | {s:.1f} | {devices.get(stage, 'unknown')} |"
                  for stage, s in sorted(summary["stage_seconds"].items(), key=stage_rank)]
    return "\n".join(lines)
