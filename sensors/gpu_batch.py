"""gpu_batch_sensor: each new materialization of a batch's raw_episodes (its probe, a CPU run in the emilia_forge
location) launches that batch's GPU run (emilia_job) in this, the emilia_gpu location.

The two locations share one instance, so the sensor reads the probe's materialization records by asset key, after its
cursor (a storage id): a probe from raw_audio_sensor's run, a UI materialization or a CLI launch each start one GPU
run per materialization. It lives in the GPU location because a sensor can only target jobs of its own location.
"""

import os

import dagster as dg

from emilia_assets.jobs import emilia_job

RAW_EPISODES = dg.AssetKey("raw_episodes")


@dg.sensor(
    job=emilia_job,
    minimum_interval_seconds=int(os.environ.get("GPU_BATCH_SENSOR_INTERVAL_S", "30")),
    description="Launches the GPU run of each batch whose probe (raw_episodes) has just been materialized.",
)
def gpu_batch_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_EPISODES, after_storage_id=after), limit=200, ascending=True
    )
    requests = [
        dg.RunRequest(partition_key=r.partition_key, run_key=f"gpu-{r.partition_key}-{r.storage_id}")
        for r in result.records
        if r.partition_key
    ]
    cursor = str(max(r.storage_id for r in result.records)) if result.records else context.cursor
    return dg.SensorResult(run_requests=requests, cursor=cursor)
