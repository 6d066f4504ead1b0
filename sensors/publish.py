"""publish_sensor: every new materialization of a batch's processed_segments launches that batch's publish run.

It reads the asset's materialization records after its cursor (a storage id), so batches finished from a sensor
run, a UI materialization or a CLI backfill are all published, each once per materialization.
"""

import os

import dagster as dg

from emilia_assets.assets.process import processed_segments
from emilia_assets.jobs import publish_job


@dg.sensor(
    job=publish_job,
    minimum_interval_seconds=int(os.environ.get("PUBLISH_SENSOR_INTERVAL_S", "30")),
    description="Publishes each batch whose processed_segments has just been materialized.",
)
def publish_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=processed_segments.key, after_storage_id=after), limit=200, ascending=True
    )
    requests = [
        dg.RunRequest(partition_key=r.partition_key, run_key=f"publish-{r.partition_key}-{r.storage_id}")
        for r in result.records
        if r.partition_key
    ]
    cursor = str(max(r.storage_id for r in result.records)) if result.records else context.cursor
    return dg.SensorResult(run_requests=requests, cursor=cursor)
