"""The hand-over between a batch's runs: a new materialization of one asset launches the next run for that batch.

The probe (CPU) hands over to the GPU run, the GPU run to the publish run (CPU). The sensor reads the upstream asset's
materialization records by key after its cursor (a storage id), so a materialization from a sensor-launched run, the
UI or the CLI each start one downstream run, and the two code locations need nothing but the shared instance.
"""

import dagster as dg


def next_runs(context: dg.SensorEvaluationContext, upstream: dg.AssetKey, run_key_prefix: str) -> dg.SensorResult:
    """One run request per new partitioned materialization of `upstream` (at most 200 a tick), keyed so that a
    re-evaluated tick never launches the same run twice."""
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upstream, after_storage_id=after), limit=200, ascending=True
    )
    requests = [
        dg.RunRequest(partition_key=r.partition_key, run_key=f"{run_key_prefix}-{r.partition_key}-{r.storage_id}")
        for r in result.records
        if r.partition_key
    ]
    cursor = str(max(r.storage_id for r in result.records)) if result.records else context.cursor
    return dg.SensorResult(run_requests=requests, cursor=cursor)
