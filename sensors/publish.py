"""publish_sensor: every new materialization of a batch's processed_segments launches that batch's publish run.

It reads the asset's materialization records after its cursor (a storage id), so batches finished from a sensor
run, a UI materialization or a CLI backfill are all published, each once per materialization.
"""

import os

import dagster as dg

from emilia_assets.jobs import publish_job
from sensors.chain import next_runs

# In the emilia_gpu location: known here by its key, so this location never imports the GPU code.
PROCESSED_SEGMENTS = dg.AssetKey("processed_segments")


@dg.sensor(
    job=publish_job,
    minimum_interval_seconds=int(os.environ.get("PUBLISH_SENSOR_INTERVAL_S", "30")),
    description="Publishes each batch whose processed_segments has just been materialized.",
)
def publish_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return next_runs(context, PROCESSED_SEGMENTS, "publish")
