"""The GPU-pool resource in CPU mode through the real asset: two workers, one SIGKILLed mid-episode, nothing lost."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import dagster as dg
import polars as pl

from resources.gpu_pool import GpuPoolResource
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import batch_from_sensor, materialize_batch, metadata, seed_samples, status_table

STARTED = re.compile(r"episode (\S+) started on (\S+) \(pid (\d+), attempt 1\)")


def kill_first_started_worker(instance: dg.DagsterInstance, done: threading.Event, killed: list) -> None:
    """Reads the run's log as an operator would, and SIGKILLs the worker of the first episode that started."""
    while not done.is_set() and not killed:
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                m = STARTED.search(entry.user_message or "")
                if m:
                    os.kill(int(m.group(3)), signal.SIGKILL)
                    killed.append((m.group(1), m.group(2), int(m.group(3))))
                    return
        time.sleep(0.05)


def test_a_worker_killed_mid_episode_through_the_resource(tmp_path):
    root = tmp_path / "store"
    stems = ["monologue", "two_voices", "long_silence", "music_bed"]
    for i in range(2):
        seed_samples(root, stems, source=f"show{i}")
    store = ObjectStoreResource(local_root=str(root))
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        killed: list = []
        done = threading.Event()
        watcher = threading.Thread(target=kill_first_started_worker, args=(instance, done, killed), daemon=True)
        watcher.start()
        try:
            result = materialize_batch(instance, store, batch, gpu_pool=GpuPoolResource(cpu_workers=2),
                                       selection=None)
        finally:
            done.set()
            watcher.join(5)
        meta = metadata(result, "processed_segments")
    assert killed, "no episode start was logged"
    victim, worker, pid = killed[0]
    status = status_table(root, batch)
    assert status["status"].to_list() == ["done"] * 8  # every episode processed
    assert status.filter(pl.col("episode_id") == victim)["attempts"].to_list() == [2]
    assert status.filter(pl.col("episode_id") != victim)["attempts"].to_list() == [1] * 7
    assert f"{worker} (pid {pid}) killed by SIGKILL while processing {victim}" in meta["worker_losses"]
    assert meta["workers"] == "2 CPU workers, 1 threads each"
    segments = pl.read_parquet(root / f"processed/_batches/{batch}.segments.parquet")
    assert segments["id"].n_unique() == segments.height > 0  # exactly once: no segment twice
    for eid in status["episode_id"]:
        assert len(list(root.glob(f"processed/*/{eid}/all_segments.json"))) == 1
