"""hf_shards: one batch into the release (WebDataset shards and Parquet, its index, the card) and onto the Hub.

A thin wrapper over `emilia_publish.release.publish_batch`, which holds the release's rules (one episode version per
raw object, supersession, the incremental summary, the writer lock, provenance checks; see docs/release.md). The
asset is in the `release_writer` pool: with its limit at one (the publish sensor keeps it there), Dagster runs one
publish at a time, and the store lock makes a second writer wait even where the pool is not enforced.

Before publishing, it refuses a batch whose latest processed_segments materialization failed a blocking check; after
publishing, it evaluates the release checks (`emilia_assets.checks`) from the files it wrote.
"""

import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from emilia_assets.checks import (
    HF_SHARDS,
    PROCESSED_SEGMENTS,
    RELEASE_CHECKS,
    failed_blocking_checks,
    results,
    specs,
)
from emilia_assets.partitions import episode_batches
from emilia_assets.pools import RELEASE_POOL
from emilia_assets.versions import PUBLISH_CODE_VERSION
from emilia_pipe.workdir import batch_dir
from emilia_publish.filters import PublishFilters
from emilia_publish.hub import publish_files
from emilia_publish.release import PublishOutcome, PublishSettings, ReleaseRefused, publish_batch
from emilia_publish.release_checks import check_published_batch
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource

# A Parquet file holds the samples of one tar and must stay under 2 GiB.
MAX_SHARD_MB = 1536.0


class ShardConfig(dg.Config):
    max_shard_mb: float = Field(default=512.0, gt=0, le=MAX_SHARD_MB,
                                description="Target shard size (payload MiB); its Parquet twin must stay < 2 GiB.")
    max_shard_samples: int = Field(default=10_000, description="At most this many samples per shard.")
    min_dnsmos_ovrl: float | None = Field(default=None, description="Publish filter (off by default).")
    min_duration_s: float | None = Field(default=None, description="Publish filter (off by default).")
    max_duration_s: float | None = Field(default=None, description="Publish filter (off by default).")
    min_language_probability: float | None = Field(default=None, description="Publish filter (off by default).")
    cps_iqr_fence: bool = Field(default=False, description="Drop speech-rate outliers per episode, as Emilia did.")
    test_release: bool = Field(
        default=False,
        description="Allow output of random-weight models (`models tiny`) into the release, whose card then says "
        "it is a test release. Also set by HF_TEST_RELEASE=1 (the hf resource's test_release).",
    )

    def filters(self) -> PublishFilters:
        return PublishFilters(min_dnsmos_ovrl=self.min_dnsmos_ovrl, min_duration_s=self.min_duration_s,
                              max_duration_s=self.max_duration_s,
                              min_language_probability=self.min_language_probability,
                              cps_iqr_fence=self.cps_iqr_fence)


def _metadata(outcome: PublishOutcome) -> dict[str, dg.MetadataValue]:
    files = outcome.files
    tars = files.filter(files["shard"].str.ends_with(".tar"))
    meta: dict[str, dg.MetadataValue] = {
        "shards": dg.MetadataValue.int(tars.height),
        "parquet_files": dg.MetadataValue.int(files.height - tars.height),
        "samples": dg.MetadataValue.int(outcome.samples),
        "bytes": dg.MetadataValue.int(int(tars["bytes"].sum() or 0)),
        "hours": dg.MetadataValue.float(outcome.hours),
        "dropped_by_filters": dg.MetadataValue.json(outcome.dropped_by_filters),
        "release_generation": dg.MetadataValue.int(outcome.generation),
        "release_samples": dg.MetadataValue.int(outcome.release_samples),
        "test_release": dg.MetadataValue.bool(outcome.test_release),
        "superseded": dg.MetadataValue.int(outcome.count("supersedes")),
        "stale": dg.MetadataValue.int(outcome.count("stale")),
        "rewritten_batches": dg.MetadataValue.json(outcome.rewritten_batches),
        "release_decisions": dg.MetadataValue.md(
            "\n".join(f"- {d.describe()}" for d in outcome.decisions if d.outcome != "new") or "all new"),
        "lock_waited_s": dg.MetadataValue.float(round(outcome.lock_waited_s, 1)),
        "shard_list": dg.MetadataValue.md(
            "\n".join(f"- `{r['shard']}` {r['samples']} samples, sha256 {r['sha256'][:12]}"
                      for r in files.iter_rows(named=True)) or "none"
        ),
        "upload": dg.MetadataValue.text("skipped: HF_REPO_ID unset"),
    }
    report = outcome.upload
    if report is not None:
        meta.update({
            "upload": dg.MetadataValue.text("done"),
            "uploaded_files": dg.MetadataValue.int(len(report.uploaded)),
            "skipped_files": dg.MetadataValue.int(len(report.skipped)),
            "deleted_files": dg.MetadataValue.int(len(report.deleted)),
            "commits": dg.MetadataValue.int(report.commits),
            "retries": dg.MetadataValue.int(report.retries),
        })
    return meta


@dg.asset(
    partitions_def=episode_batches,
    deps=[dg.AssetKey("processed_segments")],  # in the emilia_gpu location
    pool=RELEASE_POOL,
    code_version=PUBLISH_CODE_VERSION,
    group_name="publish",
    kinds={"python", "huggingface", "parquet"},
    check_specs=specs(HF_SHARDS, RELEASE_CHECKS),
    description="The batch in the release: WebDataset shards (`shards/<language>/<batch>-<n:05d>.tar`) and their "
    "Parquet twins, its index, the dataset card from the release summary; uploaded to the Hugging Face dataset "
    "repo when HF_REPO_ID is set.",
)
def hf_shards(
    context: dg.AssetExecutionContext, config: ShardConfig, store: ObjectStoreResource, hf: HuggingFaceResource
) -> dg.MaterializeResult:
    blocked = failed_blocking_checks(context.instance, PROCESSED_SEGMENTS, context.partition_key)
    if blocked:
        raise dg.Failure(description=(
            f"batch {context.partition_key} is not published: its latest processed_segments materialization failed "
            "blocking checks; fix the cause and materialize processed_segments again:\n"
            + "\n".join(f"- {b}" for b in blocked)))
    settings = PublishSettings(
        processed_prefix=store.processed_prefix, filters=config.filters(),
        max_shard_bytes=int(config.max_shard_mb * 2**20), max_shard_samples=config.max_shard_samples,
        test_release=config.test_release or hf.test_release, repo_id=hf.repo_id or "emilia-forge/dataset",
        license=hf.license,
    )
    target = hf.target()
    upload = None
    if target is not None:

        def upload(files: dict[str, Path], delete: list[str], message: str, tick) -> object:
            def log(line: str) -> None:
                context.log.info(line)
                tick()

            return publish_files(target, files, delete=delete, max_files_per_commit=hf.max_files_per_commit,
                                 message=message, log=log)

    work = batch_dir(context.partition_key)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="publish-", dir=work) as tmp:
        try:
            outcome = publish_batch(store.open(), context.partition_key, settings, work_dir=Path(tmp) / "work",
                                    upload=upload, log=context.log.info)
        except ReleaseRefused as err:
            raise dg.Failure(description=str(err)) from None
        checks = results(HF_SHARDS, RELEASE_CHECKS, lambda: check_published_batch(
            store.open(), context.partition_key, settings, work_dir=Path(tmp)))
    return dg.MaterializeResult(metadata=_metadata(outcome), check_results=checks)
