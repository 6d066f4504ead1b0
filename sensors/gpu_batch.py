"""gpu_batch_sensor: each new materialization of a batch's raw_episodes (its probe, a CPU run in the emilia_forge
location) launches that batch's GPU run (emilia_job) in this, the emilia_gpu location.

The two locations share one instance, so the sensor reads the probe's materialization records by asset key, after its
cursor (a storage id): a probe from raw_audio_sensor's run, a UI materialization or a CLI launch each start one GPU
run per materialization. It lives in the GPU location because a sensor can only target jobs of its own location.
"""

import dagster as dg

from emilia_assets.jobs import emilia_job
from emilia_pipe.settings import env_number
from sensors.chain import next_runs

RAW_EPISODES = dg.AssetKey("raw_episodes")


@dg.sensor(
    job=emilia_job,
    minimum_interval_seconds=env_number("GPU_BATCH_SENSOR_INTERVAL_S", 30),
    description="Launches the GPU run of each batch whose probe (raw_episodes) has just been materialized.",
)
def gpu_batch_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return next_runs(context, RAW_EPISODES, "gpu")
