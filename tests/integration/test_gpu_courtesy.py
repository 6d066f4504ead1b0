"""The GPU courtesy sensor against a Kubernetes API server on 127.0.0.1, with the real clients on both sides.

The pod reads go through the `kubernetes` client; the batch runs are launched and terminated by the real
K8sRunLauncher (its Jobs and pods live in the test's API server) through a real Dagster instance with the
QueuedRunCoordinator; the pool limit is the instance's. The test plays the scheduler, the other teams and the run
workers (which report a terminated run canceled). The batch job here is a stand-in with the same shape as
`emilia_job` (partitioned by batch, its asset in `GPU_POOL`), so the test does not depend on which asset of the
location carries the pool.
"""

from __future__ import annotations

import json
import sys

import dagster as dg
import pytest
from dagster._core.code_pointer import CodePointer
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

from emilia_assets.partitions import episode_batches
from emilia_assets.pools import GPU_POOL
from sensors.courtesy_core import CourtesyMemory
from sensors.gpu_courtesy import COURTESY_TAG, FOR_TAG, REQUEUE_OF_TAG, build_gpu_courtesy_sensor
from tests.integration.kube_cluster import GPU_FULL, KubeCluster

NAMESPACE = "emilia"
GPU_CONFIG = json.dumps({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "8"}}}})


@dg.asset(partitions_def=episode_batches, pool=GPU_POOL)
def gpu_batch() -> None:
    """Stands in for processed_segments: never executed here (the run workers are the test)."""


gpu_batch_job = dg.define_asset_job("gpu_batch_job", selection=[gpu_batch], partitions_def=episode_batches)
courtesy = build_gpu_courtesy_sensor(gpu_batch_job, GPU_POOL, name="courtesy_under_test")
DEFS = dg.Definitions(assets=[gpu_batch], jobs=[gpu_batch_job], sensors=[courtesy])


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    kube = KubeCluster()
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("GPU_COURTESY_KUBECONFIG", str(kubeconfig))
    for name in ("GPU_COURTESY_NAMESPACES", "GPU_COURTESY_DRY_RUN", "GPU_COURTESY_MAX_LIMIT",
                 "GPU_COURTESY_MIN_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    yield kube, kubeconfig
    kube.close()


@pytest.fixture
def instance(cluster):
    _, kubeconfig = cluster
    overrides = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "service_account_name": "dagster", "instance_config_map": "dagster-instance",
            "dagster_home": "/opt/dagster/dagster_home", "job_image": "emilia-forge:test",
            "load_incluster_config": False, "kubeconfig_file": str(kubeconfig), "job_namespace": NAMESPACE}},
        "concurrency": {"pools": {"granularity": "run"}},
    }
    with dg.instance_for_test(overrides=overrides) as inst:
        inst.add_dynamic_partitions(episode_batches.name, [f"b{i}" for i in range(1, 8)])
        yield inst


JOB = DEFS.resolve_job_def("gpu_batch_job")
ORIGIN = JobPythonOrigin(JOB.name, RepositoryPythonOrigin(sys.executable, CodePointer.from_python_file(
    __file__, "DEFS", None), container_image="emilia-forge:test"))
REMOTE_ORIGIN = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("test"), "__repository__"),
                                JOB.name)


def create(instance, batch: str, status=dg.DagsterRunStatus.NOT_STARTED) -> str:
    run = instance.create_run_for_job(
        JOB, status=status, job_code_origin=ORIGIN, remote_job_origin=REMOTE_ORIGIN,
        tags={"dagster/partition": batch, "dagster-k8s/config": GPU_CONFIG, "team": "speech"},
        run_config={"ops": {}},
    )
    return run.run_id


def launch(instance, batch: str) -> str:
    """What the queue daemon does for a run: the K8sRunLauncher creates its Job; the run worker starts."""
    run_id = create(instance, batch)
    instance.launch_run(run_id, workspace=None)
    instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, job_name=JOB.name), run_id=run_id)
    return run_id


def tick(instance, cursor):
    """One evaluation as the code server runs it, run requests resolved against the job and its partitions."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=DEFS)
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # the daemon's context has the instance
        return courtesy.evaluate_tick(ctx)


def pool_limit(instance) -> int:
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}[GPU_POOL]


def status(instance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_courtesy_terminates_newest_first_for_others_and_requeues_the_batches(cluster, instance):
    kube, _ = cluster
    b1, b2, b3 = (launch(instance, b) for b in ("b1", "b2", "b3"))
    create(instance, "b6", dg.DagsterRunStatus.QUEUED)
    create(instance, "b7", dg.DagsterRunStatus.QUEUED)
    assert len(kube.jobs) == 3
    pod_labels = [p["metadata"]["labels"] for p in kube.pods.values()]
    assert {lab["dagster/run-id"] for lab in pod_labels} == {b1, b2, b3}  # the launcher's own labels
    kube.place(b1, "h100-1")
    kube.place(b2, "h100-2")
    kube.refuse(b3)  # the cluster is full for us

    # One of ours waits: hold (limit = what holds GPUs + 1 = what is in flight).
    data = tick(instance, None)
    assert pool_limit(instance) == 3
    assert not data.run_requests and "1 of our pods waiting" in data.skip_message
    listed = [c for c in kube.calls if c.method == "GET" and c.path == "/api/v1/pods"]
    assert {c.query.get("fieldSelector") for c in listed} >= {"status.phase=Pending"}
    assert any(c.query.get("continue") for c in listed), "the sensor follows the API's pages"

    # b3 placed, a backlog and none of ours waiting: one more may launch; it does, and waits.
    kube.place(b3, "h100-3")
    data = tick(instance, data.cursor)
    assert pool_limit(instance) == 4 and "2 queued" in data.skip_message
    b4 = launch(instance, "b4")
    kube.refuse(b4)

    # Other teams' pods wait for 8 + 4 GPUs (and two pods that our GPUs would not help).
    kube.add_pod("team-x", "train-a", gpus=8, refused=GPU_FULL)
    kube.add_pod("team-y", "eval", gpus=4, refused=GPU_FULL)
    kube.add_pod("team-y", "fresh", gpus=8)  # the scheduler has not tried it: it may fit on free GPUs
    kube.add_pod("team-z", "a100-only", gpus=8, refused="0/4 nodes are available: 4 node(s) didn't match Pod's "
                                                        "node affinity/selector.")
    data = tick(instance, data.cursor)
    # Newest first: our waiting b4 (it would take what we free), then b3 and b2 for 12 GPUs; b1 stays.
    assert kube.deletes("jobs") == [f"dagster-run-{r}" for r in (b4, b3, b2)]
    assert [status(instance, r) for r in (b1, b2, b3, b4)] == [
        dg.DagsterRunStatus.STARTED, *[dg.DagsterRunStatus.CANCELING] * 3]
    assert pool_limit(instance) == 1  # nothing more launches while they wait
    tags = instance.get_run_by_id(b3).tags
    assert tags[COURTESY_TAG] == "terminated" and tags[FOR_TAG] == "team-x/train-a, team-y/eval"
    memory = CourtesyMemory.loads(data.cursor)
    assert len(memory.served) == 2 and set(memory.serves_by_run) == {b3, b2}

    # Next tick, same cluster: our runs are on their way out; nothing more is terminated for the same pods.
    data = tick(instance, data.cursor)
    assert kube.deletes("jobs") == [f"dagster-run-{r}" for r in (b4, b3, b2)]
    assert pool_limit(instance) == 1 and not data.run_requests

    # The run workers stop; the pods go; the others' pods are placed.
    for r in (b2, b3, b4):
        instance.report_run_canceled(instance.get_run_by_id(r))
    kube.finish_deletions()
    kube.place("train-a", "h100-2")
    kube.place("eval", "h100-3")
    kube.place("fresh", "h100-4")
    data = tick(instance, data.cursor)
    assert pool_limit(instance) == 2  # b1 holds GPUs; one more may launch
    requests = sorted(data.run_requests, key=lambda r: r.partition_key)
    assert [r.partition_key for r in requests] == ["b2", "b3", "b4"]
    for req, old in zip(requests, (b2, b3, b4), strict=True):
        assert req.run_key == f"courtesy-requeue-{old}"
        assert req.job_name == "gpu_batch_job"
        assert req.tags[REQUEUE_OF_TAG] == old
        assert req.tags["dagster/priority"] == "1"  # ahead of b6, b7 that never started
        assert req.tags["dagster-k8s/config"] == GPU_CONFIG and req.tags["team"] == "speech"
        assert COURTESY_TAG not in req.tags
    # Until the daemon has created them, every tick asks again (the run key keeps it to one run each).
    assert [r.run_key for r in tick(instance, data.cursor).run_requests] == [r.run_key for r in data.run_requests]

    # The daemon creates the runs (queued); the old runs are then marked re-queued and left alone.
    for req in requests:
        instance.create_run_for_job(JOB, status=dg.DagsterRunStatus.QUEUED, tags=req.tags,
                                    run_config=req.run_config, remote_job_origin=REMOTE_ORIGIN)
    data = tick(instance, data.cursor)
    assert not data.run_requests and "5 queued" in data.skip_message
    assert [instance.get_run_by_id(r).tags[COURTESY_TAG] for r in (b2, b3, b4)] == ["requeued"] * 3
    assert status(instance, b1) == dg.DagsterRunStatus.STARTED


def test_dry_run_decides_but_touches_nothing(cluster, instance, monkeypatch):
    kube, _ = cluster
    b1 = launch(instance, "b1")
    kube.place(b1)
    kube.add_pod("team-x", "train-a", gpus=8, refused=GPU_FULL)
    monkeypatch.setenv("GPU_COURTESY_DRY_RUN", "1")
    data = tick(instance, None)
    assert "dry run" in data.skip_message and "train-a" in data.skip_message
    assert kube.deletes("jobs") == [] and status(instance, b1) == dg.DagsterRunStatus.STARTED
    assert GPU_POOL not in {p.name for p in instance.event_log_storage.get_pool_limits()}


def test_a_run_whose_job_does_not_exist_yet_is_still_requeued(cluster, instance):
    """Terminated while still STARTING: the launcher finds no Job to delete, but the run is canceling all the same."""
    kube, _ = cluster
    starting = create(instance, "b5")
    instance.report_dagster_event(DagsterEvent(DagsterEventType.PIPELINE_STARTING.value, job_name=JOB.name),
                                  run_id=starting)
    kube.add_pod("team-x", "train-a", gpus=8, refused=GPU_FULL)
    data = tick(instance, None)
    assert kube.deletes("jobs") == [f"dagster-run-{starting}"]  # answered 404
    assert status(instance, starting) == dg.DagsterRunStatus.CANCELING
    assert instance.get_run_by_id(starting).tags[COURTESY_TAG] == "terminated"
    instance.report_run_canceled(instance.get_run_by_id(starting))  # as run monitoring does
    data = tick(instance, data.cursor)
    assert [r.partition_key for r in data.run_requests] == ["b5"]


def test_without_a_cluster_the_sensor_skips(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("GPU_COURTESY_KUBECONFIG", str(tmp_path / "absent"))
    with dg.instance_for_test() as instance:
        data = tick(instance, None)
    assert not data.run_requests
    assert "no Kubernetes configuration" in data.skip_message and str(tmp_path / "absent") in data.skip_message


def test_off_by_default_on_with_gpu_courtesy(monkeypatch):
    monkeypatch.delenv("GPU_COURTESY", raising=False)
    monkeypatch.setenv("GPU_COURTESY_INTERVAL_S", "45")
    off = build_gpu_courtesy_sensor(gpu_batch_job)
    assert off.default_status == dg.DefaultSensorStatus.STOPPED and off.minimum_interval_seconds == 45
    monkeypatch.setenv("GPU_COURTESY", "1")
    assert build_gpu_courtesy_sensor(gpu_batch_job).default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("GPU_COURTESY_INTERVAL_S", "half a minute")
    with pytest.raises(ValueError, match="GPU_COURTESY_INTERVAL_S must be an integer"):
        build_gpu_courtesy_sensor(gpu_batch_job)
