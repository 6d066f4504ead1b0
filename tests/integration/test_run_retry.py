"""A batch run whose pod is lost is failed by run monitoring, re-executed by the run-retry daemon, and resumes.

The deployment's instance (deploy/dagster.yaml: QueuedRunCoordinator, the real K8sRunLauncher, run monitoring, run
retries) with SQLite storage and the launcher pointed at a recording Kubernetes API server on 127.0.0.1; the GPU
location as a `dagster api grpc` server; a real `dagster-daemon`. The test plays the kubelet: it runs each Job's
container command (`dagster api execute_run ...`) as a process, and "loses the pod" of the first one once an episode
is complete: SIGKILL to the run worker and its pipe workers, and the Job reported failed. Only the daemon's poll
intervals are shortened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._grpc.client import DagsterGrpcClient
from dagster_shared.utils import find_free_port

from emilia_assets.jobs import RUN_RETRY_TAGS
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import batch_from_sensor, seed_samples
from tests.integration.test_k8s_launch import process
from tests.k8s_fixture import ROOT, RecordingKubeApi, deploy_instance_config, grpc_ready, sqlite_storage, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
IMAGE = "registry.example.com/emilia-forge:test-sha"


def run_pod(job: dict, env: dict[str, str], log: Path) -> subprocess.Popen:
    """What the kubelet would start for this Job: its container's command, with this machine's DAGSTER_HOME."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["dagster", "api", "execute_run"], args
    with log.open("ab") as out:
        return subprocess.Popen([str(BIN / "dagster"), *args[1:]], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_a_run_lost_with_its_pod_is_retried_by_the_daemon_and_resumes(tmp_path):
    root = tmp_path / "store"
    seed_samples(root, ["music_bed", "long_silence", "monologue"])
    home = tmp_path / "home"
    home.mkdir()
    markers = root / "processed/_episodes"
    with RecordingKubeApi() as api, ExitStack() as stack:
        config = sqlite_storage(deploy_instance_config(), home / "storage")
        config["run_launcher"]["config"].update(
            load_incluster_config=False, kubeconfig_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        config["run_monitoring"]["poll_interval_seconds"] = 1  # 120 in production
        config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(root), "EMILIA_STAGES": "",
               "EMILIA_WORK_DIR": str(tmp_path / "work"), "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",
               "DAGSTER_CURRENT_IMAGE": IMAGE}
        env.pop("R2_BUCKET", None)
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        store = ObjectStoreResource(local_root=str(root))
        (batch,) = batch_from_sensor(instance, store)

        port = find_free_port()
        stack.enter_context(process([str(BIN / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p", str(port),
                                     "-m", "emilia_assets.gpu_definitions"], env, tmp_path / "grpc.log"))
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": [
            {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "emilia_gpu"}}]}))
        stack.enter_context(process([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env,
                                    tmp_path / "daemon.log"))
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        wait_until(lambda: grpc_ready(client), idle_s=120, poll_s=0.2)
        subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-l", "emilia_gpu",
                        "-j", "emilia_job", "--tags", json.dumps({"dagster/partition": batch})],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)

        # The first pod: runs until an episode is complete, then is lost with everything in it.
        wait_until(lambda: api.jobs, idle_s=120, poll_s=0.2)
        first = run_pod(api.jobs[0], env, tmp_path / "pod1.log")
        try:
            wait_until(lambda: any(markers.glob("*.json")) or first.poll() is not None, idle_s=180, poll_s=0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        finished = {p.stem for p in markers.glob("*.json")}
        assert 1 <= len(finished) < 3, "the first pod was lost midway"
        before = {p: p.stat().st_mtime_ns for eid in finished for p in [*root.glob(f"processed/*/{eid}/*"),
                                                                        markers / f"{eid}.json"]}
        api.fail_job(api.jobs[0]["metadata"]["name"])

        # Run monitoring fails the run; the retry daemon re-executes it; the queue launches it as a second Job.
        wait_until(lambda: len(api.jobs) >= 2, idle_s=120, progress=lambda: _statuses(instance), poll_s=0.2)
        second = run_pod(api.jobs[1], env, tmp_path / "pod2.log")
        assert second.wait(timeout=300) == 0, (tmp_path / "pod2.log").read_text()[-3000:]
        time.sleep(2)  # room for a wrong third launch to show
        runs = sorted(instance.get_runs(), key=lambda r: r.tags.get("dagster/retry_number", "0"))
        jobs = list(api.jobs)
        mat = instance.get_latest_materialization_event(dg.AssetKey("processed_segments"))

    assert len(jobs) == 2, "one retry, no more"
    for job in jobs:  # the retry, like the lost run, asks for a whole GPU node (emilia_job's dagster-k8s/config)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    lost, retry = runs
    assert lost.status == dg.DagsterRunStatus.FAILURE and retry.status == dg.DagsterRunStatus.SUCCESS
    assert retry.tags["dagster/parent_run_id"] == lost.run_id and retry.tags["dagster/retry_number"] == "1"
    assert retry.tags["dagster/partition"] == batch and retry.job_name == "emilia_job"
    assert {k: retry.tags[k] for k in RUN_RETRY_TAGS} == RUN_RETRY_TAGS
    meta = {k: v.value for k, v in mat.asset_materialization.metadata.items()}
    assert mat.run_id == retry.run_id
    assert (meta["resumed"], meta["done"], meta["failed"]) == (len(finished), 3 - len(finished), 0)
    assert {p: p.stat().st_mtime_ns for p in before} == before, "finished episodes were not written again"
    segments = pl.read_parquet(root / "processed/_batches" / f"{batch}.segments.parquet")
    assert segments["id"].n_unique() == segments.height == meta["segments"]
    assert len(list(root.glob("processed/*/*/*.mp3"))) == segments.height


def _statuses(instance) -> list[str]:
    return [r.status.value for r in instance.get_runs()]
