"""hf_shards: the batch's segments packed into WebDataset shards under shards/<language>/."""


import hashlib
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from emilia_assets.assets.process import processed_segments
from emilia_assets.batching import read_parquet
from emilia_assets.layout import batch_segments_key, shard_key, shard_prefix
from emilia_assets.partitions import episode_batches
from emilia_pipe.shards import Sample, plan_shards, write_shard
from resources.object_store import ObjectStoreResource, iter_objects


class ShardConfig(dg.Config):
    max_shard_mb: float = Field(default=512.0, description="Target shard size (payload MiB).")
    max_shard_samples: int = Field(default=10_000, description="At most this many samples per shard.")


def sample_meta(row: dict) -> dict:
    """The released Emilia fields (id, wav, text, duration, speaker, language, dnsmos) plus provenance."""
    return {
        "id": row["id"], "wav": f"{row['id']}.mp3", "text": row["text"] or "", "duration": row["duration"],
        "speaker": row["speaker"], "language": row["language"], "dnsmos": row["dnsmos_ovrl"],
        "start": row["start"], "end": row["end"], "episode_id": row["episode_id"], "source": row["source"],
        "dnsmos_sig": row["dnsmos_sig"], "dnsmos_bak": row["dnsmos_bak"], "dnsmos_ovrl": row["dnsmos_ovrl"],
        "language_probability": row["language_probability"],
    }


@dg.asset(
    partitions_def=episode_batches,
    deps=[processed_segments],
    group_name="publish",
    kinds={"python"},
    description="WebDataset tar shards of the batch: shards/<language>/<batch>-<n:05d>.tar (<key>.mp3 + <key>.json).",
)
def hf_shards(
    context: dg.AssetExecutionContext, config: ShardConfig, store: ObjectStoreResource
) -> dg.MaterializeResult:
    batch_id = context.partition_key
    s = store.open()
    segments = read_parquet(s, batch_segments_key(store.processed_prefix, batch_id)).sort("id")
    written: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for (language,), rows in segments.group_by(["language"], maintain_order=True):
            by_id = {r["id"]: r for r in rows.iter_rows(named=True)}
            # Sizes from one listing per episode directory; the audio itself is streamed shard by shard.
            sizes: dict[str, int] = {}
            for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in rows["mp3_key"]}):
                sizes.update({o.key: o.size for o in iter_objects(s, prefix)})
            plan = plan_shards(((k, sizes.get(by_id[k]["mp3_key"], 0)) for k in sorted(by_id)),
                               int(config.max_shard_mb * 2**20), config.max_shard_samples)
            keys = []
            for n, shard in enumerate(plan):
                path = Path(tmp) / f"{n:05d}.tar"
                samples = (Sample(k, s.get_bytes(by_id[k]["mp3_key"]), sample_meta(by_id[k])) for k in shard)
                count = write_shard(path, samples)
                key = shard_key(language, batch_id, n)
                s.put_file(path, key)
                keys.append(key)
                written.append({"shard": key, "language": language, "samples": count, "bytes": path.stat().st_size,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
            # A rebuild that yields fewer shards must not leave the old tail behind (it would duplicate samples).
            for obj in list(iter_objects(s, shard_prefix(language, batch_id))):
                if obj.key not in keys:
                    s.delete(obj.key)
    table = pl.DataFrame(written, schema={"shard": pl.String, "language": pl.String, "samples": pl.Int64,
                                          "bytes": pl.Int64, "sha256": pl.String})
    return dg.MaterializeResult(
        metadata={
            "shards": dg.MetadataValue.int(table.height),
            "samples": dg.MetadataValue.int(int(table["samples"].sum() or 0)),
            "bytes": dg.MetadataValue.int(int(table["bytes"].sum() or 0)),
            "hours": dg.MetadataValue.float(round(float(segments["duration"].sum() or 0) / 3600, 4)),
            "shard_list": dg.MetadataValue.md(
                "\n".join(f"- `{r['shard']}` {r['samples']} samples, sha256 {r['sha256'][:12]}"
                          for r in table.iter_rows(named=True)) or "none"
            ),
        }
    )
