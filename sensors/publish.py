"""publish_sensor: every new materialization of a batch's processed_segments launches that batch's publish run.

It reads the asset's materialization records after its cursor (a storage id), so batches finished from a sensor
run, a UI materialization or a CLI backfill are all published, each once per materialization; a materialization
whose run failed one of processed_segments' blocking checks is passed over (hf_shards would refuse it too). It also
keeps the `release_writer` pool (hf_shards) at one slot: one publish at a time writes the release.
"""

import dagster as dg

from emilia_assets.checks import failed_blocking_checks
from emilia_assets.jobs import publish_job
from emilia_assets.pools import RELEASE_POOL
from emilia_pipe.settings import env_number
from sensors.chain import next_runs

# In the emilia_gpu location: known here by its key, so this location never imports the GPU code.
PROCESSED_SEGMENTS = dg.AssetKey("processed_segments")


def keep_release_pool_at_one(instance: dg.DagsterInstance) -> bool:
    """Set the release_writer pool's limit to 1 unless it is; True when it had to."""
    storage = instance.event_log_storage
    limits = {p.name: p.limit for p in storage.get_pool_limits()}
    if limits.get(RELEASE_POOL) == 1:
        return False
    storage.set_concurrency_slots(RELEASE_POOL, 1)
    return True


@dg.sensor(
    job=publish_job,
    minimum_interval_seconds=env_number("PUBLISH_SENSOR_INTERVAL_S", 30),
    description="Publishes each batch whose processed_segments has just been materialized (one publish at a time).",
)
def publish_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    if keep_release_pool_at_one(context.instance):
        context.log.info(f"pool {RELEASE_POOL} set to 1 slot: one publish run writes the release at a time")

    def held(record: dg.EventLogRecord) -> list[str]:
        return failed_blocking_checks(context.instance, PROCESSED_SEGMENTS, record.partition_key, record.run_id)

    return next_runs(context, PROCESSED_SEGMENTS, "publish", held=held)
