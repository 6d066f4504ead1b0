"""raw_audio_sensor: new objects under raw_audio/ become batch manifests, partitions and runs.

A thin wrapper over `emilia_pipe.batching.scan_tick`, which holds the paging, dedupe and manifest writing.
"""



import dagster as dg

from emilia_assets.jobs import probe_job
from emilia_assets.partitions import episode_batches
from emilia_pipe.batching import ScanCursor, forget_reprocess_request, reprocess_requests, scan_tick
from emilia_pipe.settings import env_number
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource


@dg.sensor(
    job=probe_job,
    minimum_interval_seconds=env_number("RAW_AUDIO_SENSOR_INTERVAL_S", 30),
    description="Pages through raw_audio/ a few list calls per tick and launches one probe run per new batch.",
)
def raw_audio_sensor(
    context: dg.SensorEvaluationContext, store: ObjectStoreResource, batching: BatchingResource
) -> dg.SensorResult:
    s = store.open()
    tick = scan_tick(
        s,
        ScanCursor.loads(context.cursor),
        store.raw_prefix,
        batching.scan_limits(),
        batching.batch_limits(),
    )
    new_ids = [b.batch_id for b in tick.batches]
    if tick.replayed:
        # An earlier evaluation of this tick wrote these manifests but its cursor was never committed: adopt the
        # batches it left without a partition (only this tick's, so a bounded number of instance calls).
        new_ids = [b for b in new_ids if not context.instance.has_dynamic_partition(episode_batches.name, b)]
        context.log.info(f"sweep {tick.cursor.sweep}: replayed an uncommitted tick, {len(new_ids)} batches adopted")
    else:
        context.log.info(
            f"sweep {tick.cursor.sweep}: listed {len(tick.keys_listed)} keys in {tick.pages_listed} pages, "
            f"{len(tick.batches)} new batches ({sum(len(b.objects) for b in tick.batches)} episodes)"
        )
    # Re-processing requests (`emilia-forge reprocess`): adopted like new batches; a request whose partition exists
    # was adopted by an earlier tick, whose result has been committed, and is forgotten.
    for requested in reprocess_requests(s):
        if context.instance.has_dynamic_partition(episode_batches.name, requested):
            forget_reprocess_request(s, requested)
        elif requested not in new_ids:
            new_ids.append(requested)
            context.log.info(f"re-processing batch {requested} adopted")
    return dg.SensorResult(
        dynamic_partitions_requests=[episode_batches.build_add_request(new_ids)] if new_ids else [],
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"batch-{b}") for b in new_ids],
        cursor=tick.cursor.dumps(),
    )
