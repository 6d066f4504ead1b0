"""The hand-over between a batch's runs: a new materialization of one asset launches the next run for that batch.

The probe (CPU) hands over to the GPU run, the GPU run to the publish run (CPU). The sensor reads the upstream asset's
materialization records by key after its cursor (a storage id), so a materialization from a sensor-launched run, the
UI or the CLI each start one downstream run, and the two code locations need nothing but the shared instance.
"""

from collections.abc import Callable

import dagster as dg


def next_runs(context: dg.SensorEvaluationContext, upstream: dg.AssetKey, run_key_prefix: str,
              held: Callable[[dg.EventLogRecord], list[str]] | None = None) -> dg.SensorResult:
    """One run request per new partitioned materialization of `upstream` (at most 200 a tick), keyed so that a
    re-evaluated tick never launches the same run twice. `held` names why a materialization must not go on (its
    failed blocking checks): such a one is logged and passed over; a later materialization of the batch goes on."""
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upstream, after_storage_id=after), limit=200, ascending=True
    )
    requests = []
    for r in result.records:
        if not r.partition_key:
            continue
        reasons = held(r) if held else []
        if reasons:
            context.log.warning(f"batch {r.partition_key}: not launching its {run_key_prefix} run: "
                                + "; ".join(reasons))
            continue
        requests.append(dg.RunRequest(partition_key=r.partition_key,
                                      run_key=f"{run_key_prefix}-{r.partition_key}-{r.storage_id}"))
    cursor = str(max(r.storage_id for r in result.records)) if result.records else context.cursor
    return dg.SensorResult(run_requests=requests, cursor=cursor)
