"""dataset_report_sensor: one dataset report run after new batches, however many arrived since the last one.

Each tick reads the newest materialization record of processed_segments (one record, by key: the asset lives in the
emilia_gpu location) and requests a run of dataset_report when it is newer than the cursor; the run key is that
record's storage id, so a re-evaluated tick never launches it twice. Ticks come at most every
`DATASET_REPORT_INTERVAL_S` (default 600 s), so a burst of batches costs one report.
"""

import dagster as dg

from emilia_assets.assets.report import dataset_report
from emilia_pipe.settings import env_number

PROCESSED_SEGMENTS = dg.AssetKey("processed_segments")


@dg.sensor(
    target=[dataset_report],
    minimum_interval_seconds=env_number("DATASET_REPORT_INTERVAL_S", 600),
    description="Re-draws the dataset report (tables and plots over all batches) after new batches were processed.",
)
def dataset_report_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PROCESSED_SEGMENTS, after_storage_id=after), limit=1, ascending=False
    ).records
    if not records:
        return dg.SkipReason("no batch processed since the last report")
    newest = records[0].storage_id
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"dataset-report-{newest}")], cursor=str(newest))
