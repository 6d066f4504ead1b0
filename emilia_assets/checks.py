"""Asset checks of each batch: their specs (which block), their results as Dagster sees them, and the gate that keeps
a batch whose processed output failed a blocking check out of the release.

The checks are computed by Dagster-free cores (`emilia_pipe.batch_checks`, `emilia_publish.release_checks`) from the
batch's own files, inside the asset's own step (`check_specs`): every materialization of a partition evaluates them,
whether it comes from the UI, a backfill, the CLI or a sensor, and no job selection can leave them out.

Blocking (`blocking=True`, severity ERROR) where publishing bad output is worse than waiting; a failed blocking check
fails the asset's step (its materialization is still recorded, with the check's verdict beside it) and:
- in the same run, Dagster skips the downstream assets;
- in later runs, `hf_shards` refuses a batch whose latest `processed_segments` materialization failed a blocking
  check (`failed_blocking_checks`), and the publish sensor does not launch its publish run. Re-materializing the
  batch (after fixing the cause) records new verdicts and lets it through.
The verdicts are written right after the materialization, in the same step: a sensor tick falling between the two
launches the publish run, whose gate in hf_shards then finds the verdicts and refuses.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from emilia_assets.partitions import episode_batches
from emilia_pipe.batch_checks import (
    BLOCKING_BATCH_CHECKS,
    DNSMOS_NOT_COLLAPSED,
    DURATIONS_WITHIN_RULES,
    FAILED_EPISODES,
    SEGMENT_IDS_UNIQUE,
    CheckOutcome,
)
from emilia_publish.release_checks import NO_RANDOM_WEIGHT_RELEASE, SHARDS_MATCH_CATALOGUE

PROCESSED_SEGMENTS = dg.AssetKey("processed_segments")
HF_SHARDS = dg.AssetKey("hf_shards")

# name -> (blocking, what it means and why it blocks or not): shown as the check's description in the UI.
PROCESSED_CHECKS: dict[str, tuple[bool, str]] = {
    FAILED_EPISODES: (FAILED_EPISODES in BLOCKING_BATCH_CHECKS, (
        "At most max_failure_fraction (processed_segments' run config) of the batch's episodes failed; the metadata "
        "counts failures by reason. Blocking: a batch that mostly failed points at a broken input or pod, and "
        "publishing its few survivors would hide that; the step fails on it as well.")),
    SEGMENT_IDS_UNIQUE: (SEGMENT_IDS_UNIQUE in BLOCKING_BATCH_CHECKS, (
        "No segment id twice in the batch's catalogue nor across its episodes' all_segments.json. Blocking: the id "
        "is the sample key in the shards and the release index; a duplicate overwrites a sample or breaks the "
        "release's one-key-once rule.")),
    DURATIONS_WITHIN_RULES: (DURATIONS_WITHIN_RULES in BLOCKING_BATCH_CHECKS, (
        "Every segment lasts between the segmentation rules' min and max (the pipe's min_segment_s/max_segment_s). "
        "Not blocking (warning): an out-of-bounds segment is still valid speech with its text, and a batch whose "
        "episodes were resumed under other rules would otherwise wait for a full re-run; hf_shards' "
        "min/max_duration_s filters keep such segments out when wanted.")),
    DNSMOS_NOT_COLLAPSED: (DNSMOS_NOT_COLLAPSED in BLOCKING_BATCH_CHECKS, (
        "The batch's DNSMOS scores are finite and spread (three or more scored segments whose standard deviation "
        "is at least 0.005, per OVRL/SIG/BAK; see emilia_pipe.batch_checks). Blocking: collapsed scores mean a "
        "broken quality model, and every published score (the card's quality figures, users' filters) would be "
        "wrong.")),
}
RELEASE_CHECKS: dict[str, tuple[bool, str]] = {
    SHARDS_MATCH_CATALOGUE: (True, (
        "The batch's tars hold exactly its catalogued segments that the release holds (after the publish "
        "filters), each as .mp3 + .json, and the index agrees. Blocking: a release whose shards and index disagree "
        "with the catalogue must not feed anything downstream; the step fails so the batch is re-published.")),
    NO_RANDOM_WEIGHT_RELEASE: (True, (
        "Nothing the batch published was made by the random-weight model set (kind tiny), unless this is an "
        "explicit test release (test_release / HF_TEST_RELEASE=1). Blocking: random-weight output in a real "
        "release is garbage presented as data; the step fails at once.")),
}


def specs(asset: dg.AssetKey, checks: dict[str, tuple[bool, str]]) -> list[dg.AssetCheckSpec]:
    """Partitioned like the asset, so the UI shows each batch's own verdicts (a preview feature of Dagster's, whose
    warning is silenced here: every evaluation also names its partition, which is what the gate below reads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [dg.AssetCheckSpec(name, asset=asset, blocking=blocking, description=text,
                                  partitions_def=episode_batches)
                for name, (blocking, text) in checks.items()]


def _value(value: Any) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.json(value)


def results(asset: dg.AssetKey, checks: dict[str, tuple[bool, str]],
            evaluate: Callable[[], Sequence[CheckOutcome]]) -> list[dg.AssetCheckResult]:
    """One result per check in `checks`; a check that cannot be evaluated (a file missing, a store error) fails
    with the reason rather than taking the step down with it."""
    try:
        outcomes = {o.name: o for o in evaluate()}
    except Exception as err:  # noqa: BLE001 - reported as the checks' failure, with the error
        reason = f"could not evaluate: {type(err).__name__}: {err}"
        outcomes = {name: CheckOutcome(name, False, reason) for name in checks}
    out = []
    for name, (blocking, _) in checks.items():
        o = outcomes.get(name) or CheckOutcome(name, False, "not evaluated")
        out.append(dg.AssetCheckResult(
            asset_key=asset, check_name=name, passed=o.passed, description=o.description,
            severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
            metadata={"summary": dg.MetadataValue.text(o.description),
                      **{k: _value(v) for k, v in o.metadata.items()}}))
    return out


def failed_blocking_checks(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str,
                           run_id: str | None = None) -> list[str]:
    """The blocking checks of `asset`'s `partition` that failed (severity ERROR) in run `run_id`, by default the
    run of the partition's latest materialization, as "name: description (run id)"; empty when none failed or
    there is no such run (never materialized, or reported without a run)."""
    if run_id is None:
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1, ascending=False).records
        run_id = latest[0].run_id if latest else None
    if not run_id:
        return []
    verdicts: dict[str, Any] = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.asset_key == asset and evaluation.partition in (None, partition):
            verdicts[evaluation.check_name] = evaluation  # the last one of a check wins
    return [f"{e.check_name}: {e.description} (run {run_id})" for e in verdicts.values()
            if not e.passed and e.blocking and e.severity == dg.AssetCheckSeverity.ERROR]
