"""hf_shards: a batch's segments as WebDataset shards, its index, the dataset card, and the Hugging Face upload.

Everything is written to the store first (`shards/`, `index/`, `card/`), then uploaded: shards first, the index and
the card last, so the repo never advertises samples it does not hold. Shards are deterministic, and the upload skips
files the Hub already has with the same checksum, so re-running a batch never duplicates a sample.
"""

import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from emilia_assets.partitions import episode_batches
from emilia_pipe.shards import Sample, plan_shards, write_shard
from emilia_publish.card import render_card
from emilia_publish.filters import PublishFilters, apply_filters
from emilia_publish.hub import publish_files
from emilia_publish.index import (
    checksums_to_parquet,
    concat_indexes,
    index_frame,
    index_from_parquet,
    index_to_parquet,
    shard_checksums,
)
from emilia_store import ObjectStore, iter_objects, read_parquet
from emilia_store.layout import (
    CARD_PREFIX,
    INDEX_PREFIX,
    batch_segments_key,
    checksums_key,
    index_key,
    shard_key,
    shard_prefix,
)
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource


class ShardConfig(dg.Config):
    max_shard_mb: float = Field(default=512.0, description="Target shard size (payload MiB).")
    max_shard_samples: int = Field(default=10_000, description="At most this many samples per shard.")
    min_dnsmos_ovrl: float | None = Field(default=None, description="Publish filter (off by default).")
    min_duration_s: float | None = Field(default=None, description="Publish filter (off by default).")
    max_duration_s: float | None = Field(default=None, description="Publish filter (off by default).")
    min_language_probability: float | None = Field(default=None, description="Publish filter (off by default).")
    cps_iqr_fence: bool = Field(default=False, description="Drop speech-rate outliers per episode, as Emilia did.")

    def filters(self) -> PublishFilters:
        return PublishFilters(min_dnsmos_ovrl=self.min_dnsmos_ovrl, min_duration_s=self.min_duration_s,
                              max_duration_s=self.max_duration_s,
                              min_language_probability=self.min_language_probability,
                              cps_iqr_fence=self.cps_iqr_fence)


def sample_meta(row: dict) -> dict:
    """The released Emilia fields (id, wav, text, duration, speaker, language, dnsmos) plus provenance."""
    return {
        "id": row["id"], "wav": f"{row['id']}.mp3", "text": row["text"] or "", "duration": row["duration"],
        "speaker": row["speaker"], "language": row["language"], "dnsmos": row["dnsmos_ovrl"],
        "start": row["start"], "end": row["end"], "episode_id": row["episode_id"], "source": row["source"],
        "batch_id": row["batch_id"], "dnsmos_sig": row["dnsmos_sig"], "dnsmos_bak": row["dnsmos_bak"],
        "dnsmos_ovrl": row["dnsmos_ovrl"], "language_probability": row["language_probability"],
    }


def release_index(store: ObjectStore) -> pl.DataFrame:
    """Every batch's index in the store: the whole release, which the card describes."""
    return concat_indexes(
        index_from_parquet(store.get_bytes(o.key))
        for o in iter_objects(store, INDEX_PREFIX)
        if o.key.endswith(".parquet") and not o.key.endswith(".shards.parquet")
    )


@dg.asset(
    partitions_def=episode_batches,
    deps=[dg.AssetKey("processed_segments")],  # in the emilia_gpu location
    group_name="publish",
    kinds={"python", "huggingface"},
    description="WebDataset shards of the batch (shards/<language>/<batch>-<n:05d>.tar), its Parquet index, the "
    "dataset card, uploaded to the Hugging Face dataset repo when HF_REPO_ID is set.",
)
def hf_shards(
    context: dg.AssetExecutionContext, config: ShardConfig, store: ObjectStoreResource, hf: HuggingFaceResource
) -> dg.MaterializeResult:
    batch_id = context.partition_key
    s = store.open()
    catalogue = read_parquet(s, batch_segments_key(store.processed_prefix, batch_id)).sort("id")
    segments, dropped = apply_filters(catalogue, config.filters())
    shard_of: dict[str, str] = {}
    uploads: dict[str, Path] = {}
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
                path = Path(tmp) / f"{language}-{n:05d}.tar"
                samples = (Sample(k, s.get_bytes(by_id[k]["mp3_key"]), sample_meta(by_id[k])) for k in shard)
                write_shard(path, samples)
                key = shard_key(language, batch_id, n)
                s.put_file(path, key)
                keys.append(key)
                shard_of.update(dict.fromkeys(shard, key))
                uploads[f"data/{language}/{batch_id}-{n:05d}.tar"] = path
            # A rebuild that yields fewer shards must not leave the old tail behind (it would duplicate samples).
            for obj in list(iter_objects(s, shard_prefix(language, batch_id))):
                if obj.key not in keys:
                    s.delete(obj.key)

        index = index_frame([sample_meta(r) for r in segments.iter_rows(named=True)], shard_of, batch_id=batch_id)
        checksums = shard_checksums(uploads)  # only the shards are in `uploads` yet; one read of each tar
        index_bytes, checksum_bytes = index_to_parquet(index), checksums_to_parquet(checksums)
        s.put_bytes(index_key(batch_id), index_bytes)
        s.put_bytes(checksums_key(batch_id), checksum_bytes)
        release = release_index(s)
        readme, figure = render_card(release, repo_id=hf.repo_id or "emilia-forge/dataset", license=hf.license,
                                     filters=config.filters(), index_path="index/*.parquet")
        s.put_bytes(f"{CARD_PREFIX}README.md", readme.encode())
        s.put_bytes(f"{CARD_PREFIX}assets/distributions.png", figure)

        upload_meta: dict[str, dg.MetadataValue] = {"upload": dg.MetadataValue.text("skipped: HF_REPO_ID unset")}
        target = hf.target()
        if target is not None:
            for name, data in ((index_key(batch_id), index_bytes), (checksums_key(batch_id), checksum_bytes),
                               ("README.md", readme.encode()), ("assets/distributions.png", figure)):
                path = Path(tmp) / name.replace("/", "__")
                path.write_bytes(data)
                uploads[name] = path  # after the shards: the repo never points at shards it lacks
            report = publish_files(target, uploads, max_files_per_commit=hf.max_files_per_commit,
                                   message=f"Emilia Forge: batch {batch_id}", log=context.log.info)
            upload_meta = {
                "upload": dg.MetadataValue.text(f"{target.repo_id}"),
                "uploaded_files": dg.MetadataValue.int(len(report.uploaded)),
                "skipped_files": dg.MetadataValue.int(len(report.skipped)),
                "commits": dg.MetadataValue.int(report.commits),
                "retries": dg.MetadataValue.int(report.retries),
            }

    table = checksums  # shard (its path in the repo), bytes, samples, sha256
    return dg.MaterializeResult(
        metadata={
            "shards": dg.MetadataValue.int(table.height),
            "samples": dg.MetadataValue.int(int(table["samples"].sum() or 0)),
            "bytes": dg.MetadataValue.int(int(table["bytes"].sum() or 0)),
            "hours": dg.MetadataValue.float(round(float(segments["duration"].sum() or 0) / 3600, 4)),
            "dropped_by_filters": dg.MetadataValue.json(dropped),
            "release_samples": dg.MetadataValue.int(release.height),
            "shard_list": dg.MetadataValue.md(
                "\n".join(f"- `{r['shard']}` {r['samples']} samples, sha256 {r['sha256'][:12]}"
                          for r in table.iter_rows(named=True)) or "none"
            ),
            **upload_meta,
        }
    )
