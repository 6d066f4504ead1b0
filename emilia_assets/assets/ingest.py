"""raw_episodes: a batch's manifest, with every file probed so unreadable input is known before the GPU stage."""


import dagster as dg
import polars as pl

from emilia_assets.partitions import episode_batches
from emilia_assets.versions import PROBE_CODE_VERSION
from emilia_pipe.audio import AudioError, probe
from emilia_pipe.batching import read_manifest
from emilia_pipe.workdir import batch_workdir
from emilia_store import cached_copy, write_parquet
from emilia_store.layout import probes_key
from resources.object_store import ObjectStoreResource

PROBE_SCHEMA = {
    "episode_id": pl.String,
    "audio_key": pl.String,
    "ok": pl.Boolean,
    "reason": pl.String,
    "duration_s": pl.Float64,
    "codec": pl.String,
    "sample_rate": pl.Int64,
    "channels": pl.Int64,
}


@dg.asset(
    partitions_def=episode_batches,
    group_name="ingest",
    code_version=PROBE_CODE_VERSION,
    kinds={"python", "parquet"},
    description="The batch's episodes (`manifests/batches/<batch>.parquet`), each probed: duration, codec, rate.",
)
def raw_episodes(context: dg.AssetExecutionContext, store: ObjectStoreResource) -> dg.MaterializeResult:
    batch_id = context.partition_key
    s = store.open()
    manifest = read_manifest(s, batch_id)
    rows = []
    with batch_workdir(batch_id) as work:
        for ep in manifest.iter_rows(named=True):
            row = {"episode_id": ep["episode_id"], "audio_key": ep["audio_key"], "ok": False, "reason": None,
                   "duration_s": None, "codec": None, "sample_rate": None, "channels": None}
            try:
                info = probe(cached_copy(s, ep["audio_key"], work, ep["bytes"]))
                row.update(ok=True, duration_s=info.duration_s, codec=info.codec, sample_rate=info.sample_rate,
                           channels=info.channels)
            except AudioError as err:
                row["reason"] = err.reason
                context.log.warning(f"unreadable episode {ep['audio_key']}: {err.reason}")
            except KeyError:
                row["reason"] = "object vanished from the store after batching"
                context.log.warning(f"missing episode {ep['audio_key']}")
            rows.append(row)
    probes = pl.DataFrame(rows, schema=PROBE_SCHEMA)
    write_parquet(s, probes_key(batch_id), probes)
    bad = probes.filter(~pl.col("ok"))
    hours = float(probes["duration_s"].fill_null(0).sum()) / 3600
    return dg.MaterializeResult(
        metadata={
            "episodes": dg.MetadataValue.int(probes.height),
            "unreadable": dg.MetadataValue.int(bad.height),
            "hours_in": dg.MetadataValue.float(round(hours, 4)),
            "manifest": dg.MetadataValue.path(f"manifests/batches/{batch_id}.parquet"),
            "unreadable_files": dg.MetadataValue.md(
                "\n".join(f"- `{r['audio_key']}`: {r['reason']}" for r in bad.iter_rows(named=True)) or "none"
            ),
        }
    )
