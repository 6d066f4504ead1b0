"""`emilia-forge backfill` against the real thing: `dagster dev -w workspace.yaml` (webserver, daemon, both code
locations) on 127.0.0.1 with a queued instance whose `gpu_pods` pool has 2 slots, and the CLI as a subprocess.

1. An unknown batch name is refused before anything is launched, naming it.
2. A range of 3 of the store's 4 batches: one asset backfill, one run per batch as processed_segments' backfill
   policy says, each run QUEUED before the launcher started it, never more than 2 at once (the pool), the third
   waiting in the queue; the batches' outputs in the store. One episode of one batch cannot write its
   completion marker (a directory stands in its way), so its batch succeeds with that episode recorded failed.
   While those runs are in flight, a failed-only dry run leaves their batches out.
3. Once that batch's run has ended, the cause removed, `--failed-only` over all 4 batches launches one
   run, for that batch, which redoes that episode alone: every other file of the batch keeps its mtime, no segment
   is duplicated, and the other batches are not run again (their episodes stay `done`, not `resumed`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.events import DagsterEventType

from emilia_assets.assets.process import processed_segments
from emilia_assets.pools import GPU_POOL
from emilia_assets.run_progress import wait_until
from resources.object_store import ObjectStoreResource
from tests.integration.dagster_dev import ROOT, dagster_dev
from tests.integration.helpers import batch_from_sensor, seed_short_clips, status_table
from tests.k8s_fixture import wait_until as wait_until_quiet

pytestmark = pytest.mark.slow

POOL_SLOTS = 2
NO_PROGRESS_S = 120.0  # the backfill daemon looks for new backfills every 30 s
INSTANCE = {
    "telemetry": {"enabled": False},
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                        "config": {"dequeue_interval_seconds": 1}},
    "concurrency": {"pools": {"granularity": "run"}, "runs": {"max_concurrent_runs": 10}},
}
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
QUEUE_THEN_LAUNCH = [DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
                     DagsterEventType.RUN_SUCCESS]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emilia_pipe", "backfill", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def launched(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, n: int) -> list[dg.DagsterRun]:
    def mine(runs: list[dg.DagsterRun]) -> list[dg.DagsterRun]:
        return [r for r in runs if r.tags.get("dagster/backfill") == backfill_id]

    wait_until(instance, done=lambda finished: len(mine(finished)) >= n,
               expected=lambda finished: f"{n} runs of backfill {backfill_id}, {len(mine(finished))} finished",
               no_progress_s=NO_PROGRESS_S, poll_s=0.5)
    return mine(instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id})))


def event_types(instance: dg.DagsterInstance, run_id: str) -> list[DagsterEventType]:
    return [r.event_log_entry.dagster_event.event_type for r in instance.get_records_for_run(run_id, limit=10_000)
            .records if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.event_type
            in QUEUE_THEN_LAUNCH]


def files_with_mtimes(root: Path, leave_out: set[str]) -> dict[str, int]:
    """Every file below `root` with its mtime, but those whose path names one of `leave_out` (episode or batch ids)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not any(x in str(p.relative_to(root)) for x in leave_out)}


def test_cli_backfill_through_queue_and_pool_then_failed_only_rerun(tmp_path):
    t0 = time.monotonic()

    def step(what: str) -> None:  # the timeline, in the captured output of a failure
        print(f"[{time.monotonic() - t0:5.1f} s] {what}", flush=True)

    home, store_root = tmp_path / "home", tmp_path / "store"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(INSTANCE))
    seed_short_clips(store_root, 7, seconds=5.0, source="bf")
    store = ObjectStoreResource(local_root=str(store_root))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        batches = batch_from_sensor(instance, store, max_episodes=2)
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, POOL_SLOTS)
    assert [len(pl.read_parquet(store_root / f"manifests/batches/{b}.parquet")) for b in batches] == [2, 2, 2, 1]
    chosen = batches[:3]
    # The store refuses one episode's completion marker: the runner records it failed, the batch goes on.
    def episodes(batch: str) -> list[str]:
        return pl.read_parquet(store_root / f"manifests/batches/{batch}.parquet")["episode_id"].to_list()

    # In the batch whose run starts first: the daemon submits a backfill's runs in partition-key order.
    hit = min(chosen)
    others = [b for b in chosen if b != hit]
    victim = episodes(hit)[0]
    blocker = store_root / "processed/_episodes" / f"{victim}.json"
    blocker.mkdir(parents=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "DAGSTER_WEBSERVER"))}
    env.update({"DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(store_root), "EMILIA_STAGES": "",
                "EMILIA_WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(ROOT)})
    log = tmp_path / "dagster-dev.log"
    with dagster_dev(env, log) as server, dg.DagsterInstance.from_config(str(home)) as instance:
        url = server.url
        env["DAGSTER_WEBSERVER_URL"] = url
        step(f"dagster dev up at {url}")

        refused = cli(env, "nope-batch", chosen[0], "no-such-batch")
        assert refused.returncode == 2, refused.stderr
        assert "nope-batch, no-such-batch" in refused.stderr and "unknown batch partition" in refused.stderr
        assert instance.get_backfills() == []

        step("unknown batches refused")
        proc = cli(env, "--from", chosen[0], "--to", chosen[-1])
        step("backfill launched")
        (first,) = launched(proc)
        assert first["partitions"] == chosen
        assert first["url"] == f"{url}/runs/b/{first['backfill_id']}?tab=runs"
        assert "backfill policy: none: one run per partition" in proc.stderr and "pools: gpu_pods" in proc.stderr
        # while its runs are queued or running, a failed-only re-run leaves those batches out (never two at once)
        in_flight = dg.RunsFilter(tags={"dagster/backfill": first["backfill_id"]}, statuses=IN_FLIGHT)
        wait_until_quiet(lambda: instance.get_runs(in_flight), idle_s=NO_PROGRESS_S,
                         progress=lambda: log.stat().st_size)
        busy = cli(env, "--failed-only", "--dry-run", "--from", chosen[0])
        assert busy.returncode == 0 and busy.stdout == "", busy.stderr
        left_out = [b for b in chosen if f"{b}: a run of processed_segments is in progress" in busy.stderr]
        assert left_out and all(f"{b}: never processed" not in busy.stderr for b in left_out), busy.stderr
        step(f"failed-only dry run left out {len(left_out)} batch(es) in flight")
        # The failed episode is re-run as soon as its batch's run has ended, while others may still be in flight, as
        # an operator would; the re-run's wait for the backfill daemon then overlaps their runs.
        wait_until(instance, done=lambda finished: any(
            r.tags.get("dagster/backfill") == first["backfill_id"] and r.tags.get("dagster/partition") == hit
            for r in finished), expected=lambda _: f"the run of {hit}", no_progress_s=NO_PROGRESS_S, poll_s=0.5)
        step(f"the run of {hit} finished")
        first_table = {r["episode_id"]: r for r in status_table(store_root, hit).iter_rows(named=True)}
        assert first_table[victim]["status"] == "failed" and "upload failed" in first_table[victim]["error"]
        assert [r["status"] for e, r in first_table.items() if e != victim] == ["done"]

        # the failed-only re-run, the cause removed: only that batch, only its failed episode
        blocker.rmdir()
        still_running = {e for b in others for e in episodes(b)} | set(others)
        before = files_with_mtimes(store_root / "processed", leave_out=still_running)
        proc = cli(env, "--failed-only", "--from", chosen[0])
        step("failed-only backfill launched")
        (rerun,) = launched(proc)
        assert rerun["partitions"] == [hit]
        assert f"redo {victim} (" in proc.stderr and "upload failed" in proc.stderr
        assert f"{batches[3]}: never processed" in proc.stderr
        assert "failed-only: 1 episode(s) to redo in 1 of " in proc.stderr

        runs = wait_for_backfill(instance, first["backfill_id"], len(chosen))
        step("backfill runs finished")
        (again,) = wait_for_backfill(instance, rerun["backfill_id"], 1)
        step("failed-only run finished")
        assert again.status == dg.DagsterRunStatus.SUCCESS and again.tags["dagster/partition"] == hit
        assert again.tags["emilia/rerun"] == "failed-episodes"
        records = sorted(instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in runs])),
                         key=lambda r: r.start_time)
        all_records = [*records, *instance.get_run_records(dg.RunsFilter(run_ids=[again.run_id]))]
        backfill = instance.get_backfill(first["backfill_id"])
        assert backfill.is_asset_backfill and backfill.tags["emilia/launched-by"] == "emilia-forge backfill"

        # the backfill policy decides the number of runs (none set: one per partition, tagged with it)
        policy = processed_segments.backfill_policy
        per_run = 1 if policy is None else (policy.max_partitions_per_run or len(chosen))
        assert len(records) == math.ceil(len(chosen) / per_run) == 3
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == sorted(chosen)
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in all_records)
        # through the run queue and the run launcher: enqueued, then started by the launcher, in that order
        for r in all_records:
            assert event_types(instance, r.dagster_run.run_id) == QUEUE_THEN_LAUNCH, r.dagster_run.run_id
        # the pool: never more than POOL_SLOTS at once; the third waited queued until one of the first two ended
        for r in all_records:
            overlapping = [o for o in all_records if o.start_time < r.end_time and r.start_time < o.end_time]
            assert len(overlapping) <= POOL_SLOTS, [(o.start_time, o.end_time) for o in all_records]
        third = records[2]
        assert third.start_time >= min(r.end_time for r in records[:2])
        assert third.create_timestamp.timestamp() < min(r.end_time for r in records[:2]), "queued while they ran"
        assert "blocked by global concurrency limits" in log.read_text() and GPU_POOL in log.read_text()

    # outputs: every episode of the range done (`done`, not `resumed`: run once); nothing outside the range
    assert all(status_table(store_root, b)["status"].to_list() == ["done", "done"] for b in others)
    assert not (store_root / f"processed/_batches/{batches[3]}.parquet").exists(), "outside the range"
    # the re-run redid the failed episode alone: every other file of its batch untouched
    after = files_with_mtimes(store_root / "processed", leave_out=still_running)
    redone = {k for k in after if victim in k} | {f"_batches/{hit}.parquet", f"_batches/{hit}.segments.parquet",
                                                   f"_batches/{hit}.summary.json"}
    assert {k: v for k, v in after.items() if k not in redone} == {k: v for k, v in before.items()
                                                                    if k not in redone}, "finished files touched"
    assert f"_episodes/{victim}.json" in after and any(k.endswith(f"{victim}/all_segments.json") for k in after)
    table = {r["episode_id"]: r for r in status_table(store_root, hit).iter_rows(named=True)}
    assert table[victim]["status"] == "done"
    assert [r["status"] for e, r in table.items() if e != victim] == ["resumed"]
    segments = pl.read_parquet(store_root / f"processed/_batches/{hit}.segments.parquet")
    assert segments["id"].n_unique() == segments.height == sum(r["segments"] for r in table.values()) > 0
    assert segments.filter(pl.col("episode_id") == victim).height == table[victim]["segments"] > 0
