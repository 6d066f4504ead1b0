"""processed_segments: the Emilia pipe over one batch, through the GPU pool, resumable episode by episode.

A thin wrapper over `emilia_pipe.runner.run_batch` (which holds resume, prefetch, workers, uploads and the batch's
status table and catalogue): it reads the batch's manifest and probes, turns the runner's events into run-log lines
and its outcome into metadata, and fails the step when more than `max_failure_fraction` of the episodes failed.

Retries (docs/batch-runs.md, "Retries"): a failed step is tried again on the same pod (`PROCESS_RETRIES`, after
`PROCESS_RETRY_DELAY_S`, doubling), and each attempt resumes, so a retry redoes only the unfinished episodes. Only
what another attempt can fix is retried: a store or network error, workers that kept dying at start, a batch pushed
over the threshold by failed downloads and uploads. A batch over the threshold from bad data, and a worker that
cannot load its models, fail at once (`dg.Failure(allow_retries=False)`).

The batch's asset checks (`emilia_assets.checks`) are evaluated in this step, from the files the batch wrote.
"""

import hashlib
from collections.abc import Iterator

import dagster as dg
import polars as pl
from pydantic import Field

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.checks import PROCESSED_CHECKS, PROCESSED_SEGMENTS, results, specs
from emilia_assets.partitions import episode_batches
from emilia_assets.pools import GPU_POOL
from emilia_assets.versions import PROCESS_CODE_VERSION
from emilia_pipe import batch_report
from emilia_pipe.batch_checks import check_batch, read_batch_files
from emilia_pipe.batching import read_manifest
from emilia_pipe.failures import data_failures, worth_retrying
from emilia_pipe.runner import BatchOutcome, Episode, Probe, RunnerEvent, WorkerLoadError, run_batch
from emilia_pipe.settings import env_number
from emilia_pipe.workdir import batch_dir
from emilia_store import ObjectStore, read_parquet
from emilia_store.layout import batch_status_key, batch_summary_key, probes_key
from resources.gpu_pool import GpuPoolResource
from resources.object_store import ObjectStoreResource
from resources.pipe import EmiliaPipeResource

# Tries of a failed step after the first, on the same pod; 60 s then 180 s apart by default (a store outage, a
# throttled endpoint). A run whose pod is lost is not a step failure: the run-retry daemon re-executes it (deploy/).
RETRY_POLICY = dg.RetryPolicy(
    max_retries=env_number("PROCESS_RETRIES", 2, minimum=0),
    delay=env_number("PROCESS_RETRY_DELAY_S", 60.0, float, minimum=0),
    backoff=dg.Backoff.EXPONENTIAL,
)


class ProcessConfig(dg.Config):
    max_failure_fraction: float = Field(
        default=0.5, description="Fail the step when more than this fraction of the batch's episodes failed."
    )


def _probes(store: ObjectStore, batch_id: str) -> dict[str, Probe]:
    """What `raw_episodes` found on its CPU pod; a batch materialized without it is probed by the runner."""
    try:
        frame = read_parquet(store, probes_key(batch_id))
    except KeyError:
        return {}
    return {r["episode_id"]: Probe(r["ok"], r["reason"], r["duration_s"]) for r in frame.iter_rows(named=True)}


def _report_metadata(summary: dict, processed_prefix: str) -> dict[str, dg.MetadataValue]:
    """The batch summary (emilia_pipe.batch_report) as metadata: numbers the UI plots across partitions, one
    markdown table, the path of the summary in the store."""
    if not summary:
        return {}
    meta: dict[str, dg.MetadataValue] = {
        "summary": dg.MetadataValue.md(batch_report.markdown(summary)),
        "speakers": dg.MetadataValue.int(summary["speakers"]),
        "languages": dg.MetadataValue.int(len(summary["languages"])),
        "language_mix": dg.MetadataValue.json(
            {k: {f: v[f] for f in ("segments", "hours", "speakers")} for k, v in summary["languages"].items()}),
        "failures_by_reason": dg.MetadataValue.json(summary["failures"]),
        "summary_file": dg.MetadataValue.path(batch_summary_key(processed_prefix, summary["batch_id"])),
    }
    for metric, stats in summary["dnsmos"].items():
        for name in ("mean", *(f"p{p}" for p in batch_report.PERCENTILES)):
            if stats:
                meta[f"dnsmos_{metric}_{name}"] = dg.MetadataValue.float(float(stats[name]))
    for stage, seconds in (summary.get("stage_seconds") or {}).items():
        meta[f"stage_s_{stage}"] = dg.MetadataValue.float(float(seconds))
    return meta


def _metadata(outcome: BatchOutcome, processed_prefix: str) -> dict[str, dg.MetadataValue]:
    failed = outcome.status.filter(pl.col("status") == "failed")
    hours = outcome.processed_hours
    return {
        "episodes": dg.MetadataValue.int(outcome.status.height),
        "done": dg.MetadataValue.int(outcome.count("done")),
        "resumed": dg.MetadataValue.int(outcome.count("resumed")),
        "failed": dg.MetadataValue.int(failed.height),
        "segments": dg.MetadataValue.int(outcome.segments.height),
        "hours_in": dg.MetadataValue.float(round(outcome.hours_in, 4)),
        "hours_out": dg.MetadataValue.float(round(outcome.hours_out, 4)),
        "audio_hours_per_wall_hour": dg.MetadataValue.float(round(hours * 3600 / outcome.wall_s, 2) if hours else 0.0),
        "wall_s_per_audio_hour": dg.MetadataValue.float(round(outcome.wall_s / hours, 1) if hours else 0.0),
        "stage_s": dg.MetadataValue.json({k: round(v, 2) for k, v in outcome.stage_seconds.items()}),
        "workers": dg.MetadataValue.text(outcome.plan.describe() if outcome.plan else "none (nothing to process)"),
        "stage_devices": dg.MetadataValue.json(outcome.worker_devices),
        "worker_losses": dg.MetadataValue.md("\n".join(f"- {x}" for x in outcome.worker_losses) or "none"),
        "failures": dg.MetadataValue.md(
            "\n".join(f"- `{r['episode_id']}`: {r['error']}" for r in failed.iter_rows(named=True)) or "none"
        ),
        "status_table": dg.MetadataValue.path(batch_status_key(processed_prefix, outcome.batch_id)),
        "code_version": dg.MetadataValue.text(PROCESS_CODE_VERSION),
        **_report_metadata(outcome.summary, processed_prefix),
    }


def _data_version(outcome: BatchOutcome) -> dg.DataVersion:
    """The batch's segments (ids, episode, span, text): the same segments give the same version, however many
    attempts or resumes it took; new models or rules give new ones."""
    h = hashlib.sha256()
    cols = [c for c in ("id", "episode_id", "start", "end", "text") if c in outcome.segments.columns]
    for row in outcome.segments.select(cols).iter_rows():
        h.update(repr(row).encode())
    h.update(b"|failed:" + ",".join(sorted(outcome.status.filter(pl.col("status") == "failed")["episode_id"]
                                           .to_list())).encode())
    return dg.DataVersion(h.hexdigest()[:16])


@dg.asset(
    partitions_def=episode_batches,
    deps=[raw_episodes],
    pool=GPU_POOL,  # one slot = one 8-GPU pod; with run granularity the pool caps concurrent GPU runs
    retry_policy=RETRY_POLICY,
    code_version=PROCESS_CODE_VERSION,  # the pipe's sources and the model set (emilia_assets/versions.py)
    group_name="process",
    kinds={"pytorch", "parquet"},
    check_specs=specs(PROCESSED_SEGMENTS, PROCESSED_CHECKS),
    description="Segments of every episode of the batch: `processed/<language>/<episode_id>/` (MP3 and "
    "all_segments.json).",
)
def processed_segments(
    context: dg.AssetExecutionContext,
    config: ProcessConfig,
    store: ObjectStoreResource,
    pipe: EmiliaPipeResource,
    gpu_pool: GpuPoolResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    batch_id = context.partition_key
    s = store.open()
    episodes = [Episode.from_row(r) for r in read_manifest(s, batch_id).iter_rows(named=True)]
    plan = gpu_pool.plan(pipe.device)

    def log(event: RunnerEvent) -> None:
        getattr(context.log, event.level)(event.message)

    if context.retry_number:
        context.log.info(f"attempt {context.retry_number + 1} of batch {batch_id}: finished episodes are resumed")
    try:
        outcome = run_batch(
            batch_id, episodes, s, s, store.processed_prefix, pipe.pipe_config(device=plan.device), plan,
            batch_dir(batch_id), probes=_probes(s, batch_id), settings=gpu_pool.runner_settings(), on_event=log,
        )
    except WorkerLoadError as err:  # configuration: the same pod fails the same way again
        raise dg.Failure(description=str(err), allow_retries=False) from err
    metadata = _metadata(outcome, store.processed_prefix)
    checks = results(PROCESSED_SEGMENTS, PROCESSED_CHECKS, lambda: check_batch(
        read_batch_files(s, store.processed_prefix, batch_id), pipe.segmentation_rules(), config.max_failure_fraction))
    total, failed = outcome.status.height, outcome.count("failed")
    if total and failed / total > config.max_failure_fraction:
        bad_data = data_failures(outcome.status)
        retry = worth_retrying(outcome.status, config.max_failure_fraction)  # the store's failures tipped it over
        yield from checks  # the verdicts (failures by reason) stay on the asset's page although the step fails
        raise dg.Failure(
            description=f"{failed}/{total} episodes of batch {batch_id} failed "
                        f"(more than max_failure_fraction={config.max_failure_fraction}); see the failures list. "
                        + (f"{failed - bad_data} of them failed to download or upload: the step may be retried"
                           if retry else f"{bad_data} of them for reasons another attempt would repeat: not retried"),
            metadata=metadata,
            allow_retries=retry,
        )
    yield dg.MaterializeResult(metadata=metadata, check_results=checks, data_version=_data_version(outcome))
