"""gpu_courtesy_sensor: hands GPUs back to other teams who wait for them, and paces our own launches otherwise.

Every tick it reads pods through the Kubernetes client and our GPU-pool runs through the Dagster instance, asks the
pure `sensors.courtesy_core.decide` what to do, and applies it: the GPU pool's limit (which gates how many batch
runs Dagster's queue launches), and terminations through the run coordinator, the way the UI's Terminate does (with
the K8sRunLauncher that deletes the run's Job). A terminated run is tagged `emilia/courtesy=terminated` before it
is terminated; once it has ended, the sensor re-queues its batch (same job, partition, assets, config and user tags,
one priority higher) under a run key of its own, so no batch is lost and none is queued twice; the new run resumes
from the batch's per-episode completion markers.
"""

from __future__ import annotations

import os
import time

import dagster as dg

from emilia_assets.pools import GPU_POOL
from sensors.courtesy_core import (
    ACTIVE_STATUSES,
    ClusterView,
    CourtesyMemory,
    CourtesySettings,
    Decision,
    RunFacts,
    build_view,
    decide,
)

COURTESY_TAG = "emilia/courtesy"  # terminated -> requeued; or terminate-failed / finished (nothing to re-queue)
FOR_TAG = "emilia/courtesy-for"  # whose waiting pods the termination made room for, for people reading the UI
REQUEUE_OF_TAG = "emilia/courtesy-requeue-of"  # on the re-queued run: the run it replaces
PARTITION_TAG = "dagster/partition"
PRIORITY_TAG = "dagster/priority"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
QUEUED_SCAN_LIMIT = 1000


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer number of seconds, got {raw!r}") from None


def _in_pool(run: dg.DagsterRun, pool: str) -> bool:
    concurrency = run.run_op_concurrency
    return concurrency is not None and pool in (concurrency.all_pools or ())


def pool_runs(instance: dg.DagsterInstance, pool: str) -> tuple[list[RunFacts], int]:
    """Our launched runs holding a slot of `pool` (as Dagster's queue counts them), and how many wait in the queue."""
    active = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in ACTIVE_STATUSES]))
    runs = [
        RunFacts(r.dagster_run.run_id, r.dagster_run.status.value, r.start_time or r.update_timestamp.timestamp())
        for r in active
        if _in_pool(r.dagster_run, pool)
    ]
    queued = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), limit=QUEUED_SCAN_LIMIT)
    return runs, sum(_in_pool(r, pool) for r in queued)


def requeue_request(run: dg.DagsterRun, job_name: str, job_assets: frozenset[dg.AssetKey] | None) -> dg.RunRequest:
    """A run request that redoes `run`'s batch: same partition, assets, config and user tags, one priority higher."""
    tags = {k: v for k, v in run.tags.items() if not k.startswith(("dagster/", "emilia/courtesy"))}
    tags.update({k: run.tags[k] for k in RANGE_TAGS if k in run.tags})
    try:
        priority = int(run.tags.get(PRIORITY_TAG, "0"))
    except ValueError:
        priority = 0
    tags[PRIORITY_TAG] = str(priority + 1)  # ahead of batches that have not started at all
    tags[REQUEUE_OF_TAG] = run.run_id
    selection = None
    if run.asset_selection and job_assets:
        selection = sorted(run.asset_selection & job_assets, key=lambda k: k.to_user_string()) or None
    return dg.RunRequest(
        run_key=f"courtesy-requeue-{run.run_id}",
        job_name=job_name,
        partition_key=None if any(k in run.tags for k in RANGE_TAGS) else run.tags.get(PARTITION_TAG),
        run_config=run.run_config,
        tags=tags,
        asset_selection=selection,
    )


def requeue_requests(context: dg.SensorEvaluationContext, job_name: str) -> list[dg.RunRequest]:
    """Run requests for the batches we terminated that have ended and are not re-queued yet.

    Emitted again on every tick until the new run exists (the daemon creates at most one run per run key); then the
    old run's tag moves on to `requeued` so it is not looked at again.
    """
    instance = context.instance
    ended = instance.get_run_records(dg.RunsFilter(
        tags={COURTESY_TAG: "terminated"},
        statuses=[dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS],
    ))
    job_assets = None
    if context.repository_def is not None and ended:
        job_assets = frozenset(context.repository_def.get_job(job_name).asset_layer.executable_asset_keys)
    requests = []
    for record in ended:
        run = record.dagster_run
        if run.status == dg.DagsterRunStatus.SUCCESS:  # it finished before the termination took effect
            instance.add_run_tags(run.run_id, {COURTESY_TAG: "finished"})
        elif instance.get_run_ids(dg.RunsFilter(tags={REQUEUE_OF_TAG: run.run_id}), limit=1):
            instance.add_run_tags(run.run_id, {COURTESY_TAG: "requeued"})
        else:
            requests.append(requeue_request(run, job_name, job_assets))
    return requests


def apply(context: dg.SensorEvaluationContext, pool: str, view: ClusterView, decision: Decision) -> list[str]:
    """Set the pool limit (first, so nothing launches meanwhile), then terminate; returns the runs terminated."""
    instance = context.instance
    storage = instance.event_log_storage
    limits = {p.name: p.limit for p in storage.get_pool_limits()}
    if limits.get(pool) != decision.pool_limit:
        storage.set_concurrency_slots(pool, decision.pool_limit)
    names = ", ".join(p.name for p in view.foreign if p.uid in decision.serves or not decision.serves)
    terminated = []
    for run_id in decision.terminate:
        # Tagged before the call: even if this tick dies right after, a later tick re-queues the batch.
        instance.add_run_tags(run_id, {COURTESY_TAG: "terminated", FOR_TAG: names[:500] or "others waiting"})
        try:
            ok = instance.run_coordinator.cancel_run(run_id)
        except Exception as e:  # the run keeps running; a later tick decides again
            context.log.warning(f"terminating run {run_id} failed: {type(e).__name__}: {e}")
            ok = False
        run = instance.get_run_by_id(run_id)
        if ok or (run is not None and run.status not in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)):
            # CANCELING even when the launcher reported a failure (its Job was not there yet): once run monitoring
            # ends it, it is re-queued like the others.
            terminated.append(run_id)
        else:
            instance.add_run_tags(run_id, {COURTESY_TAG: "terminate-failed"})
            context.log.warning(f"run {run_id} was not terminated and keeps running; it will not be re-queued")
    return terminated


def courtesy_tick(context: dg.SensorEvaluationContext, job_name: str, pool: str) -> dg.SensorResult:
    from sensors.k8s_pods import NoKubernetesConfig, core_api, list_pods  # the client takes ~1 s to import

    settings = CourtesySettings.from_env(os.environ)
    requests = requeue_requests(context, job_name)
    for r in requests:
        context.log.info(f"re-queueing batch {r.partition_key or '(no partition)'} of run {r.tags[REQUEUE_OF_TAG]}")
    try:
        api = core_api(settings)
    except NoKubernetesConfig as e:
        return dg.SensorResult(run_requests=requests, skip_reason=None if requests else f"{e}; nothing to decide")

    now = time.time()
    memory = CourtesyMemory.loads(context.cursor)
    pods = list_pods(api, settings)
    runs, queued = pool_runs(context.instance, pool)
    labelled = sorted({p.run_id for p in pods if p.run_id})
    ours = set(context.instance.get_run_ids(dg.RunsFilter(run_ids=labelled))) if labelled else set()
    view = build_view(pods, runs, ours | {r.run_id for r in runs}, settings, now, queued, memory.served,
                      memory.serves_by_run)
    decision = decide(view, settings)
    if settings.dry_run:
        context.log.info(f"dry run: would set pool {pool} to {decision.pool_limit} and terminate "
                         f"{list(decision.terminate)}: {decision.reason}")
        return dg.SensorResult(run_requests=requests, cursor=memory.dumps(),
                               skip_reason=None if requests else f"dry run: {decision.reason}")
    context.log.info(decision.reason)
    terminated = apply(context, pool, view, decision)
    if terminated:
        context.log.info(f"terminated (newest first): {terminated}")
    return dg.SensorResult(run_requests=requests, cursor=memory.after(view, decision, now).dumps(),
                           skip_reason=None if requests else decision.reason)


def build_gpu_courtesy_sensor(job: dg.UnresolvedAssetJobDefinition | dg.JobDefinition, pool: str = GPU_POOL,
                              name: str = "gpu_courtesy_sensor") -> dg.SensorDefinition:
    """The sensor for the runs of `pool`; terminated batches are re-queued as runs of `job` (the batch job).

    Off by default (`GPU_COURTESY=1` turns it on when the code location loads; the UI can start it too).
    """

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=_int_env("GPU_COURTESY_INTERVAL_S", 30),
        default_status=(dg.DefaultSensorStatus.RUNNING if os.environ.get("GPU_COURTESY") == "1"
                        else dg.DefaultSensorStatus.STOPPED),
        description="Gives GPUs back to other teams' waiting pods (terminating our newest batches, which are "
                    "re-queued) and otherwise launches queued batches until exactly one of our pods waits.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return courtesy_tick(context, job.name, pool)

    return _sensor
