"""processed_segments: the Emilia pipe over one batch, resumable episode by episode.

Each finished episode leaves `processed/<language>/<episode_id>/` (MP3s, then `all_segments.json`) and then a
completion marker; a re-run skips every episode with a marker, and redoes an unfinished one from scratch after
removing its leftovers, so no segment is ever duplicated. A failing episode is recorded with its reason in the
batch's status table and the batch goes on; the step fails only if failures exceed `max_failure_fraction`.
"""


import json
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.partitions import episode_batches
from emilia_assets.pools import GPU_POOL
from emilia_pipe.audio import AudioError
from emilia_pipe.batching import read_manifest
from emilia_pipe.catalogue import SEGMENT_SCHEMA, STATUS_SCHEMA, segment_rows
from emilia_pipe.export import ALL_SEGMENTS
from emilia_pipe.keys import join, safe_language
from emilia_pipe.workdir import batch_dir, batch_workdir
from emilia_store import ObjectStore, cached_copy, delete_prefix, read_parquet, write_parquet
from emilia_store.layout import batch_segments_key, batch_status_key, episode_dir, episode_done_key, probes_key
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource


class ProcessConfig(dg.Config):
    max_failure_fraction: float = Field(
        default=0.5, description="Fail the step when more than this fraction of the batch's episodes failed."
    )


def _sidecar(store: ObjectStore, audio_key: str) -> dict | None:
    """The ingest sidecar next to the raw audio (title, url, feed, published, licence...), if there is one."""
    try:
        return json.loads(store.get_bytes(audio_key.rsplit(".", 1)[0] + ".json"))
    except (KeyError, ValueError):
        return None


def _publish_episode(store: ObjectStore, processed_prefix: str, out_dir: Path, language: str, episode_id: str,
                     summary: dict) -> None:
    prefix = episode_dir(processed_prefix, language, episode_id)
    delete_prefix(store, prefix)  # leftovers of a run killed mid-upload
    files = sorted(out_dir.iterdir(), key=lambda p: p.name == ALL_SEGMENTS)  # all_segments.json last
    for path in files:
        store.put_file(path, prefix + path.name)
    store.put_bytes(episode_done_key(processed_prefix, episode_id), json.dumps(summary).encode())


@dg.asset(
    partitions_def=episode_batches,
    deps=[raw_episodes],
    pool=GPU_POOL,  # one slot = one 8-GPU pod; with run granularity the pool caps concurrent GPU runs
    group_name="process",
    kinds={"pytorch", "parquet"},
    description="Segments of every episode of the batch: processed/<language>/<episode_id>/ (MP3 + all_segments.json).",
)
def processed_segments(
    context: dg.AssetExecutionContext,
    config: ProcessConfig,
    store: ObjectStoreResource,
    pipe: EmiliaPipeResource,
) -> dg.MaterializeResult:
    batch_id = context.partition_key
    s = store.open()
    pp = store.processed_prefix
    manifest = read_manifest(s, batch_id)
    probes = {r["episode_id"]: r for r in read_parquet(s, probes_key(batch_id)).iter_rows(named=True)}
    pipeline = pipe.pipeline()
    started = time.perf_counter()
    status: list[dict] = []
    catalogue_rows: list[dict] = []
    stage_totals: dict[str, float] = {}
    total = manifest.height

    def record(ep: dict, state: str, error: str | None = None, **kw) -> None:
        status.append({"episode_id": ep["episode_id"], "audio_key": ep["audio_key"], "status": state,
                       "error": error, "language": kw.get("language"), "duration_s": kw.get("duration_s"),
                       "speech_s": kw.get("speech_s"), "segments": kw.get("segments"), "wall_s": kw.get("wall_s")})
        # Written after every episode, so a crash keeps the record of what finished and what failed.
        write_parquet(s, batch_status_key(pp, batch_id), pl.DataFrame(status, schema=STATUS_SCHEMA))

    with batch_workdir(batch_id) as work:
        for i, ep in enumerate(manifest.iter_rows(named=True), start=1):
            eid = ep["episode_id"]
            done_key = episode_done_key(pp, eid)
            probe = probes.get(eid)
            if s.exists(done_key):
                done = json.loads(s.get_bytes(done_key))
                record(ep, "resumed", **done)
                doc = json.loads(s.get_bytes(episode_dir(pp, done["language"], eid) + ALL_SEGMENTS))
                catalogue_rows += segment_rows(pp, batch_id, ep, done, doc)
                continue
            if probe is not None and not probe["ok"]:
                record(ep, "failed", f"{ep['audio_key']}: {probe['reason']}")
                continue
            t0 = time.perf_counter()
            out_dir = Path(tempfile.mkdtemp(dir=work, prefix=".out-"))
            try:
                local = cached_copy(s, ep["audio_key"], work, ep["bytes"])
                meta = {"audio_key": ep["audio_key"], "source": ep["source"], "batch_id": batch_id,
                        "source_metadata": _sidecar(s, ep["audio_key"])}
                result = pipeline.process(local, eid, out_dir, language_hint=ep["language"], episode_meta=meta)
                language = safe_language(result.language)
                done = {"language": language, "duration_s": round(result.duration_s, 3),
                        "speech_s": round(result.speech_s, 3), "segments": len(result.segments),
                        "wall_s": round(time.perf_counter() - t0, 3),
                        "all_segments": join(episode_dir(pp, language, eid), ALL_SEGMENTS)}
                _publish_episode(s, pp, out_dir, language, eid, done)
                doc = json.loads((out_dir / ALL_SEGMENTS).read_text())  # the local copy: no second download
            except (AudioError, KeyError) as err:
                reason = err.reason if isinstance(err, AudioError) else "object vanished from the store"
                context.log.warning(f"episode {eid} ({ep['audio_key']}) failed: {reason}")
                record(ep, "failed", f"{ep['audio_key']}: {reason}")
                continue
            except Exception as err:  # one bad episode never sinks the batch
                context.log.exception(f"episode {eid} ({ep['audio_key']}) failed")
                record(ep, "failed", f"{ep['audio_key']}: {type(err).__name__}: {err}")
                continue
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            for k, v in result.stage_seconds.items():
                stage_totals[k] = stage_totals.get(k, 0.0) + v
            record(ep, "done", **done)
            catalogue_rows += segment_rows(pp, batch_id, ep, done, doc)
            context.log.info(f"[{i}/{total}] {eid}: {len(result.segments)} segments, "
                             f"{result.duration_s / 60:.1f} min in {done['wall_s']:.1f} s")

    segments = pl.DataFrame(catalogue_rows, schema=SEGMENT_SCHEMA)
    write_parquet(s, batch_segments_key(pp, batch_id), segments)
    shutil.rmtree(batch_dir(batch_id), ignore_errors=True)
    table = pl.DataFrame(status, schema=STATUS_SCHEMA)
    wall = time.perf_counter() - started
    processed_hours = float(table.filter(pl.col("status") == "done")["duration_s"].sum() or 0) / 3600
    hours_in = float(table["duration_s"].fill_null(0).sum()) / 3600
    failed = table.filter(pl.col("status") == "failed")
    metadata = {
        "episodes": dg.MetadataValue.int(total),
        "done": dg.MetadataValue.int(table.filter(pl.col("status") == "done").height),
        "resumed": dg.MetadataValue.int(table.filter(pl.col("status") == "resumed").height),
        "failed": dg.MetadataValue.int(failed.height),
        "segments": dg.MetadataValue.int(segments.height),
        "hours_in": dg.MetadataValue.float(round(hours_in, 4)),
        "hours_out": dg.MetadataValue.float(round(float(segments["duration"].sum() or 0) / 3600, 4)),
        "wall_s_per_audio_hour": dg.MetadataValue.float(round(wall / processed_hours, 1) if processed_hours else 0.0),
        "stage_s": dg.MetadataValue.json({k: round(v, 2) for k, v in stage_totals.items()}),
        "failures": dg.MetadataValue.md(
            "\n".join(f"- `{r['episode_id']}`: {r['error']}" for r in failed.iter_rows(named=True)) or "none"
        ),
        "status_table": dg.MetadataValue.path(batch_status_key(pp, batch_id)),
    }
    if total and failed.height / total > config.max_failure_fraction:
        raise dg.Failure(
            description=f"{failed.height}/{total} episodes of batch {batch_id} failed "
                        f"(more than max_failure_fraction={config.max_failure_fraction}); see the failures list",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)
