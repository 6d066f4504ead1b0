"""raw_audio_sensor: new objects under raw_audio/ become batch manifests, partitions and runs.

A thin wrapper over `emilia_pipe.batching.scan_tick`, which holds the paging and dedupe logic.
"""


import os

import dagster as dg

from emilia_assets.jobs import probe_job
from emilia_assets.partitions import episode_batches
from emilia_pipe.batching import (
    ScanCursor,
    batched_keys,
    manifest_frame,
    manifest_key,
    recent_manifests,
    scan_tick,
)
from emilia_store import write_parquet
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource


@dg.sensor(
    job=probe_job,
    minimum_interval_seconds=int(os.environ.get("RAW_AUDIO_SENSOR_INTERVAL_S", "30")),
    description="Pages through raw_audio/ a few list calls per tick and launches one probe run per new batch.",
)
def raw_audio_sensor(
    context: dg.SensorEvaluationContext, store: ObjectStoreResource, batching: BatchingResource
) -> dg.SensorResult:
    s = store.open()
    recent: list[str] = []

    def already_batched(since: float) -> set[str]:
        recent.extend(recent_manifests(s, since))
        return batched_keys(s, recent)

    tick = scan_tick(
        s,
        ScanCursor.loads(context.cursor),
        store.raw_prefix,
        already_batched,
        batching.scan_limits(),
        batching.batch_limits(),
    )
    for batch in tick.batches:
        write_parquet(s, manifest_key(batch.batch_id), manifest_frame(batch, store.raw_prefix))
    # A tick that wrote manifests but died before its cursor was committed left batches with no partition: adopt them.
    orphans = [b for b in recent if not context.instance.has_dynamic_partition(episode_batches.name, b)]
    new_ids = orphans + [b.batch_id for b in tick.batches]
    context.log.info(
        f"sweep {tick.cursor.sweep}: listed {len(tick.keys_listed)} keys in {tick.pages_listed} pages, "
        f"{len(tick.batches)} new batches ({sum(len(b.objects) for b in tick.batches)} episodes)"
        + (f", {len(orphans)} adopted" if orphans else "")
    )
    return dg.SensorResult(
        dynamic_partitions_requests=[episode_batches.build_add_request(new_ids)] if new_ids else [],
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"batch-{b}") for b in new_ids],
        cursor=tick.cursor.dumps(),
    )
