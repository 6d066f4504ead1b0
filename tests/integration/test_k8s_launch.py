"""GPU runs land on 8×H100 pods however they are started; probe and publish runs land on small CPU pods.

The deployment as the Helm chart builds it, without a cluster: the two code locations as `dagster api grpc` servers
whose container context comes from deploy/values.yaml (DAGSTER_CONTAINER_CONTEXT, DAGSTER_CURRENT_IMAGE, as the
chart sets them), a real `dagster-webserver` and `dagster-daemon` on a workspace of those servers, and the instance of
deploy/dagster.yaml (QueuedRunCoordinator, the real K8sRunLauncher, pools, run monitoring) with SQLite storage and
the launcher's kubeconfig pointed at a recording Kubernetes API server on 127.0.0.1. Runs are started the ways users
start them: the UI's Materialize (GraphQL launchRun of the GPU location's implicit asset job), an asset backfill
(GraphQL launchPartitionBackfill), `dagster job launch`, and the sensors (started through GraphQL, ticked by the
daemon). Every Job the launcher POSTs is checked, and validated against the Kubernetes 1.29-1.33 schemas.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg
import kubernetes_validate
import pytest
import requests
import yaml
from dagster._grpc.client import DagsterGrpcClient
from dagster_graphql import DagsterGraphQLClient
from dagster_shared.utils import find_free_port

from tests.k8s_fixture import (
    DEPLOY,
    ROOT,
    RecordingKubeApi,
    deploy_instance_config,
    grpc_ready,
    sqlite_storage,
    wait_until,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
IMAGE = "registry.example.com/emilia-forge:test-sha"
K8S_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
GPU_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def chart_deployments() -> list[dict]:
    """(location name, module, container context JSON) of each user deployment, from deploy/values.yaml."""
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    by_host = {d["name"]: d for d in values["dagster-user-deployments"]["deployments"]}
    out = []
    for server in values["dagsterWebserver"]["workspace"]["servers"]:
        dep = by_host[server["host"]]
        (ctx,) = [e["value"] for e in dep["env"] if e["name"] == "DAGSTER_CONTAINER_CONTEXT"]
        out.append({"location": server["name"], "args": dep["dagsterApiGrpcArgs"], "container_context": ctx})
    return out


def graphql(url: str, query: str, variables: dict) -> dict:
    reply = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=120).json()
    assert "errors" not in reply, reply
    return reply["data"]


START_SENSOR = """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {
  __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename } } } } }"""


def container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def assert_gpu_pod(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    res = container(job)["resources"]
    assert res.get("limits", {}).get("nvidia.com/gpu") == "8" == res.get("requests", {}).get("nvidia.com/gpu"), res
    assert res["requests"]["cpu"] == "64" and res["requests"]["memory"] == "512Gi"
    assert res["limits"]["memory"] == "1024Gi"
    assert pod["nodeSelector"] == GPU_SELECTOR
    assert GPU_TOLERATION in pod["tolerations"]
    # the location context and the job tag both name /dev/shm: merged, not duplicated (a cluster refuses duplicates)
    assert [v for v in pod["volumes"] if v["name"] == "dshm"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert [m for m in container(job)["volumeMounts"] if m["name"] == "dshm"] == [
        {"name": "dshm", "mountPath": "/dev/shm"}]


def assert_cpu_pod(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(job)
    assert not pod.get("nodeSelector") and not pod.get("tolerations")
    assert container(job)["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}


def assert_common(job: dict) -> None:
    """What every run pod gets from the launcher of deploy/dagster.yaml, and the schemas of five Kubernetes minors."""
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1" and job["spec"]["backoffLimit"] == 0
    c = container(job)
    assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent"
    assert c["envFrom"] == [{"configMapRef": {"name": "emilia-forge-env"}}, {"secretRef": {"name": "r2-credentials"}},
                            {"secretRef": {"name": "hf-token"}}]
    assert {"name": "DAGSTER_PG_PASSWORD", "valueFrom": {"secretKeyRef": {
        "key": "postgresql-password", "name": "dagster-postgresql-secret"}}} in c["env"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "dagster"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, f"{version}.0", strict=True)


def test_runs_are_placed_by_location_from_ui_backfill_cli_and_sensors(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with RecordingKubeApi() as api, ExitStack() as stack:
        config = sqlite_storage(deploy_instance_config(), home / "storage")
        config["run_launcher"]["config"].update(
            load_incluster_config=False, kubeconfig_file=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        # No kubelet will ever finish these runs, so each keeps its pool slot: room for the test's four GPU runs.
        config["concurrency"]["pools"]["default_limit"] = 8
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(tmp_path / "data"),
               "GPU_BATCH_SENSOR_INTERVAL_S": "1", "PUBLISH_SENSOR_INTERVAL_S": "1"}
        env.pop("R2_BUCKET", None)
        # Create the storage once here: servers starting together would race to create the same SQLite tables.
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))

        # The chart's user deployments: one gRPC server per location, with the chart's environment.
        servers = []
        for dep in chart_deployments():
            port = find_free_port()
            stack.enter_context(process(
                [str(BIN / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p", str(port), *dep["args"]],
                {**env, "DAGSTER_CONTAINER_CONTEXT": dep["container_context"], "DAGSTER_CURRENT_IMAGE": IMAGE},
                tmp_path / f"{dep['location']}.log"))
            servers.append({"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": dep["location"]}})
        workspace = tmp_path / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": servers}))
        for s in servers:
            client = DagsterGrpcClient(port=s["grpc_server"]["port"], host="127.0.0.1")
            wait_until(lambda c=client: grpc_ready(c), idle_s=300, poll_s=1)  # start-up: imports torch

        web_port = find_free_port()
        stack.enter_context(process([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
                                     "-w", str(workspace)], env, tmp_path / "webserver.log"))
        url = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: _all_loaded(url), idle_s=300, poll_s=1)

        batches = [f"b{i}" for i in range(1, 7)]
        instance.add_dynamic_partitions("episode_batches", batches)
        # (a) the UI's Materialize of processed_segments, batch b1: the GPU location's implicit asset job
        client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
        ui_run = client.submit_job_execution("__ASSET_JOB", repository_location_name="emilia_gpu",
                                             repository_name="__repository__", tags={"dagster/partition": "b1"},
                                             asset_selection=["processed_segments"])
        # (a') an asset backfill of b2, as the UI's partition dialog launches it
        reply = graphql(url, BACKFILL, {"p": {"partitionNames": ["b2"],
                                              "assetSelection": [{"path": ["processed_segments"]}]}})
        assert reply["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", reply
        # (b) the CLI: a GPU batch and a probe
        for location, job, batch in (("emilia_gpu", "emilia_job", "b3"), ("emilia_forge", "probe_job", "b6")):
            subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-l", location,
                            "-j", job, "--tags", json.dumps({"dagster/partition": batch})],
                           cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        # (c) a probe finished for b4 -> gpu_batch_sensor; (d) segments finished for b5 -> publish_sensor
        instance.report_runless_asset_event(dg.AssetMaterialization("raw_episodes", partition="b4"))
        instance.report_runless_asset_event(dg.AssetMaterialization("processed_segments", partition="b5"))
        for location, sensor in (("emilia_gpu", "gpu_batch_sensor"), ("emilia_forge", "publish_sensor")):
            reply = graphql(url, START_SENSOR, {"s": {"repositoryLocationName": location,
                                                      "repositoryName": "__repository__", "sensorName": sensor}})
            assert reply["startSensor"]["sensorState"]["status"] == "RUNNING", reply

        # The daemon: dequeues (through the pools), runs the backfill and the sensors, launches on "Kubernetes".
        stack.enter_context(process([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env,
                                    tmp_path / "daemon.log"))
        wait_until(lambda: len(api.jobs) >= 6, idle_s=120, progress=lambda: len(api.jobs), poll_s=1)

        runs = {r.tags.get("dagster/partition"): r for r in instance.get_runs()}
        assert sorted(runs) == batches
        assert runs["b1"].run_id == ui_run and runs["b1"].job_name == "__ASSET_JOB"
        assert runs["b2"].tags.get("dagster/backfill") and runs["b2"].job_name == "__ASSET_JOB"
        assert runs["b3"].job_name == "emilia_job"
        assert runs["b4"].job_name == "emilia_job" and runs["b4"].tags["dagster/sensor_name"] == "gpu_batch_sensor"
        assert runs["b5"].job_name == "publish_job" and runs["b5"].tags["dagster/sensor_name"] == "publish_sensor"
        assert runs["b6"].job_name == "probe_job"
        jobs = {batch: api.job_for_run(run.run_id) for batch, run in runs.items()}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs, indent=1))  # for reading when an assertion fails

    assert len(api.jobs) == 6, "one Kubernetes Job per run"
    for batch in ("b1", "b2", "b3", "b4"):
        assert jobs[batch]["metadata"]["labels"]["dagster/code-location"] == "emilia_gpu"
        assert_gpu_pod(jobs[batch])
    for batch in ("b5", "b6"):
        assert jobs[batch]["metadata"]["labels"]["dagster/code-location"] == "emilia_forge"
        assert_cpu_pod(jobs[batch])
    for job in jobs.values():
        assert_common(job)
    assert all(path.startswith("/apis/batch/v1/namespaces/emilia/jobs") for method, path in api.requests
               if method == "POST")


def _all_loaded(url: str) -> bool:
    try:
        data = graphql(url, LOCATIONS, {})
    except (requests.RequestException, ValueError):
        return False
    entries = data["workspaceOrError"]["locationEntries"]
    return len(entries) == 2 and all(e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)
