"""A run killed midway resumes: finished episodes are skipped, nothing is duplicated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from emilia_assets.assets.ingest import raw_episodes
from emilia_assets.run_progress import wait_until
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import SAMPLES, batch_from_sensor, materialize_batch, metadata

ROOT = Path(__file__).resolve().parents[2]


def instance_at(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def seed_six(root: Path) -> None:
    for i, stem in enumerate(["monologue", "two_voices", "music_bed"] * 2):
        dst = root / f"raw_audio/en/show{i % 2}/{stem}.mp3"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / f"{stem}.mp3", dst)


def test_killed_run_resumes_only_unfinished_episodes(tmp_path):
    root = tmp_path / "store"
    seed_six(root)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(root),
           "EMILIA_WORK_DIR": str(tmp_path / "work"), "EMILIA_STAGES": ""}  # the cheap stages: this is about resuming
    store = ObjectStoreResource(local_root=str(root))
    with instance_at(home) as instance:
        (batch,) = batch_from_sensor(instance, store)
        materialize_batch(instance, store, batch, selection=[raw_episodes])  # the probe (a CPU run in production)

    # The real CLI on the GPU location in a child process, killed with SIGKILL once the first episode is complete.
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "emilia_assets.gpu_definitions",
         "--select", "processed_segments", "--partition", batch],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    markers = root / "processed/_episodes"

    def still_running() -> None:
        assert proc.poll() is None, "the run ended before it could be killed"

    try:
        with instance_at(home) as instance:  # the CLI's run logs there: its progress keeps the wait going
            wait_until(instance, done=lambda _: markers.is_dir() and any(markers.glob("*.json")),
                       expected=lambda _: f"a finished episode's marker in {markers}", poll_s=0.05,
                       log=lambda _: None, check=still_running)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    finished = {p.stem for p in markers.glob("*.json")}
    assert 1 <= len(finished) < 6
    before = {p: p.stat().st_mtime_ns for eid in finished for p in root.glob(f"processed/en/{eid}/*")}

    with instance_at(home) as instance:
        result = materialize_batch(instance, store, batch)
    meta = metadata(result, "processed_segments")
    assert meta["resumed"] == len(finished)
    assert meta["done"] == 6 - len(finished)
    assert meta["failed"] == 0
    # finished episodes were not touched again
    assert {p: p.stat().st_mtime_ns for p in before} == before

    segments = pl.read_parquet(root / "processed/_batches" / f"{batch}.segments.parquet")
    assert segments["id"].n_unique() == segments.height == meta["segments"]
    for ep_dir in root.glob("processed/en/*"):
        doc = json.loads((ep_dir / "all_segments.json").read_text())
        assert sorted(p.name for p in ep_dir.glob("*.mp3")) == sorted(s["wav"] for s in doc["segments"])
    status = pl.read_parquet(root / "processed/_batches" / f"{batch}.parquet")
    assert status.height == 6 and status["episode_id"].n_unique() == 6


def test_leftovers_of_an_unfinished_episode_are_replaced(tmp_path):
    root = tmp_path / "store"
    dst = root / "raw_audio/en/show/music_bed.mp3"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(SAMPLES / "music_bed.mp3", dst)
    store = ObjectStoreResource(local_root=str(root))
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        eid = pl.read_parquet(root / f"manifests/batches/{batch}.parquet")["episode_id"][0]
        stale = root / f"processed/en/{eid}/{eid}_000099.mp3"  # from a run killed mid-upload
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"half an mp3")
        assert materialize_batch(instance, store, batch).success
    assert not stale.exists()
    doc = json.loads((root / f"processed/en/{eid}/all_segments.json").read_text())
    assert len(list(stale.parent.glob("*.mp3"))) == len(doc["segments"]) > 0
