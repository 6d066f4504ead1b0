"""The GPU pool on a Postgres-backed instance, as the Helm deployment runs it: a second GPU run waits in the queue
until the first has ended.

Debian's PostgreSQL is started here (initdb + pg_ctl on a free port, in a scratch directory; scripts/bootstrap.sh
installs it); the instance is deploy/dagster.yaml with its connection pointed at that server and the default run
launcher (subprocesses) in place of Kubernetes. The pool limit is set the way deploy/README.md says to, with
`dagster instance concurrency set gpu_pods 1`. Two probed batches make gpu_batch_sensor request two GPU runs in one
tick; the daemon must launch the second only after the first has finished.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster_shared.utils import find_free_port

from emilia_assets.assets.ingest import raw_episodes
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import batch_from_sensor, materialize_batch, seed_short_clips
from tests.k8s_fixture import ROOT, deploy_instance_config, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def pg_tool(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [p for p in [shutil.which(name)] if p]
    if not found:
        pytest.fail(f"PostgreSQL's {name} not found: install the `postgresql` package (scripts/bootstrap.sh does)")
    return found[-1]


@pytest.fixture
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL server on 127.0.0.1; yields its port. As root, it runs as the `postgres` user
    (initdb refuses root)."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="emilia-pg-"))  # not pytest's tmp_path: its parents are private to root
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", find_free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(pg_tool("initdb"), "-D", str(data), "-U", "dagster", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(pg_tool("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="dagster", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE dagster")
        conn.close()
        yield port
    finally:
        subprocess.run([*as_user, pg_tool("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def postgres_instance_yaml(port: int) -> dict:
    """deploy/dagster.yaml against the test server, runs as local subprocesses instead of Kubernetes Jobs."""
    config = deploy_instance_config()
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        config[key]["config"]["postgres_db"] = {**config[key]["config"]["postgres_db"], "hostname": "127.0.0.1",
                                                "port": port}
    del config["run_launcher"]
    return config


def test_pool_holds_the_second_gpu_run_until_the_first_ends(postgres, tmp_path):
    home, store_root = tmp_path / "home", tmp_path / "store"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(postgres_instance_yaml(postgres)))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "emilia_assets.gpu_definitions", "location_name": "emilia_gpu",
        "working_directory": str(ROOT)}}]}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_PASSWORD": "trust-auth-ignores-it",
           "EMILIA_LOCAL_STORE": str(store_root), "EMILIA_WORK_DIR": str(tmp_path / "work"),
           "EMILIA_STAGES": "", "GPU_BATCH_SENSOR_INTERVAL_S": "1"}
    env.pop("R2_BUCKET", None)
    os.environ["DAGSTER_PG_PASSWORD"] = env["DAGSTER_PG_PASSWORD"]

    def cli_in_background(*args: str):
        proc = subprocess.Popen([str(BIN / "dagster"), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

        def wait() -> None:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"dagster {' '.join(args)}: {err[-3000:]}"

        return wait

    def cli(*args: str) -> None:
        cli_in_background(*args)()

    with dg.DagsterInstance.from_config(str(home)) as instance:  # creates the schema before the CLIs use it
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    cli("instance", "concurrency", "set", "gpu_pods", "1")
    sensor_start = cli_in_background("sensor", "start", "gpu_batch_sensor", "-w", str(workspace), "-l", "emilia_gpu")
    store = ObjectStoreResource(local_root=str(store_root))
    seed_short_clips(store_root, 2)  # the runs' length is not what this test is about
    with dg.DagsterInstance.from_config(str(home)) as instance:
        batches = batch_from_sensor(instance, store, max_episodes=1)
        assert len(batches) == 2
        for batch in batches:  # the probe runs (CPU location) that gpu_batch_sensor follows
            assert materialize_batch(instance, store, batch, selection=[raw_episodes]).success
    sensor_start()
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    timeline: list[dict[str, dg.DagsterRunStatus]] = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def statuses() -> dict[str, dg.DagsterRunStatus]:
                now = {r.run_id: r.status for r in instance.get_runs(dg.RunsFilter(job_name="emilia_job"))}
                if not timeline or timeline[-1] != now:
                    timeline.append(now)
                assert daemon.poll() is None, log.read_text()[-3000:]
                return now

            wait_until(lambda: len(statuses()) == 2 and set(statuses().values()) <= ENDED, idle_s=180,
                       progress=lambda: tuple(sorted(s.value for s in statuses().values())), poll_s=0.3)
            records = sorted(instance.get_run_records(dg.RunsFilter(job_name="emilia_job")),
                             key=lambda r: r.start_time or 0)
    finally:
        os.killpg(daemon.pid, signal.SIGINT)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)

    first, second = records
    assert {r.dagster_run.tags["dagster/partition"] for r in records} == set(batches)
    assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert all(sum(s in ACTIVE for s in snap.values()) <= 1 for snap in timeline), timeline
    assert any(snap.get(second.dagster_run.run_id) == dg.DagsterRunStatus.QUEUED
               and snap.get(first.dagster_run.run_id) in ACTIVE for snap in timeline), "the second waited queued"
    assert second.start_time >= first.end_time
    assert "gpu_pods" in log.read_text(), "the daemon names the pool that blocked the run"
