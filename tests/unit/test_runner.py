"""The batch runner and its worker pool, on CPU workers: what a GPU pod does with its 8 GPUs, here with 2 cores.

Each test runs real worker processes (spawned, models loaded once) over real sample episodes in a real store;
misfortunes (a SIGKILL, a CUDA OOM, a bug) are caused inside the workers by `tests/pool_doubles.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import polars as pl
import pytest

from emilia_pipe.batching import Batch, manifest_frame
from emilia_pipe.devices import plan_workers
from emilia_pipe.pipeline import PipeConfig
from emilia_pipe.runner import (
    Episode,
    EpisodeStarted,
    RunnerSettings,
    WorkerLoadError,
    WorkerLost,
    run_batch,
)
from emilia_store import LocalStore, ObjectInfo

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
STEMS = ["monologue", "two_voices", "long_silence", "music_bed"]


def seed(store: LocalStore, n: int) -> list[Episode]:
    objects = []
    for i in range(n):
        key = f"raw_audio/en/show/{STEMS[i % len(STEMS)]}-{i}.mp3"
        store.path(key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / f"{STEMS[i % len(STEMS)]}.mp3", store.path(key))
        objects.append(ObjectInfo(key, store.path(key).stat().st_size, 0.0))
    frame = manifest_frame(Batch("b1", objects), "raw_audio/")
    return [Episode.from_row(r) for r in frame.iter_rows(named=True)]


def run(store, episodes, tmp_path, workers=2, config=None, factory=None, **kw):
    extra = {"factory": factory} if factory else {}
    return run_batch("b1", episodes, store, store, "processed/", config or PipeConfig(),
                     plan_workers("cpu", cpu_workers=workers, cpu_count=2), tmp_path / "work", **extra, **kw)


def assert_each_episode_once(store: LocalStore, episodes: list[Episode], outcome) -> None:
    """Every episode has one marker, one folder whose MP3s are exactly its all_segments.json, no duplicates."""
    seg_ids = outcome.segments["id"].to_list()
    assert len(seg_ids) == len(set(seg_ids))
    for ep in episodes:
        done = json.loads(store.path(f"processed/_episodes/{ep.episode_id}.json").read_bytes())
        folder = store.path(f"processed/{done['language']}/{ep.episode_id}")
        doc = json.loads((folder / "all_segments.json").read_text())
        assert sorted(p.name for p in folder.glob("*.mp3")) == sorted(s["wav"] for s in doc["segments"])
        assert len(list(store.root.glob(f"processed/*/{ep.episode_id}"))) == 1


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_a_worker_killed_mid_episode_loses_nothing(store, tmp_path):
    episodes = seed(store, 6)
    killed: list[tuple[int, str]] = []

    def on_event(event):
        if isinstance(event, EpisodeStarted) and not killed:
            killed.append((event.pid, event.episode_id))
            os.kill(event.pid, signal.SIGKILL)

    outcome = run(store, episodes, tmp_path, on_event=on_event)
    status = outcome.status
    assert status["status"].to_list() == ["done"] * 6
    pid, victim = killed[0]
    row = status.filter(pl.col("episode_id") == victim).row(0, named=True)
    assert row["attempts"] == 2  # retried once, on a fresh worker
    assert status.filter(pl.col("episode_id") != victim)["attempts"].to_list() == [1] * 5
    assert any(f"pid {pid}) killed by SIGKILL while processing {victim}" in x for x in outcome.worker_losses)
    assert_each_episode_once(store, episodes, outcome)
    table = pl.read_parquet(store.path("processed/_batches/b1.parquet"))
    assert table.equals(status)
    assert not (tmp_path / "work").exists()


def test_an_episode_that_kills_every_worker_is_recorded_and_the_rest_finish(store, tmp_path, monkeypatch):
    episodes = seed(store, 4)
    monkeypatch.setenv("EMILIA_TEST_DIE_EPISODE", episodes[1].episode_id)
    lost: list[WorkerLost] = []
    outcome = run(store, episodes, tmp_path, factory="pool_doubles:dies_on",
                  on_event=lambda e: lost.append(e) if isinstance(e, WorkerLost) else None)
    by_id = {r["episode_id"]: r for r in outcome.status.iter_rows(named=True)}
    bad = by_id.pop(episodes[1].episode_id)
    assert bad["status"] == "failed" and bad["attempts"] == 2
    assert bad["error"] == (f"{episodes[1].audio_key}: worker killed by SIGKILL while processing it, 2 attempts")
    assert [r["status"] for r in by_id.values()] == ["done"] * 3
    assert [e.retried for e in lost] == [True, False]
    assert_each_episode_once(store, [e for e in episodes if e.episode_id in by_id], outcome)


def test_cuda_oom_is_retried_once_with_smaller_batches(store, tmp_path, monkeypatch, tiny_models):
    from emilia_pipe.models import ModelSet
    from emilia_pipe.settings import build_pipe_config

    config = build_pipe_config(ModelSet.load(tiny_models), stages=["dnsmos"], device="cpu")
    assert config.dnsmos.batch_size == 16
    episodes = seed(store, 3)
    monkeypatch.setenv("EMILIA_TEST_OOM_EPISODE", episodes[0].episode_id)
    monkeypatch.setenv("EMILIA_TEST_FLAGS", str(tmp_path))
    outcome = run(store, episodes, tmp_path, workers=1, config=config, factory="pool_doubles:oom_once")
    assert outcome.status["status"].to_list() == ["done"] * 3
    assert outcome.status["attempts"].to_list() == [2, 1, 1]
    assert any("out of memory" in x for x in outcome.worker_losses)
    batch_sizes = {}
    for ep in episodes:
        doc = json.loads(store.path(f"processed/en/{ep.episode_id}/all_segments.json").read_bytes())
        batch_sizes[ep.episode_id] = doc["episode"]["dnsmos_batch_size"]
    # the retry ran on a worker built with half the batches; the episodes after it on a normal one again
    assert batch_sizes == {episodes[0].episode_id: 8, episodes[1].episode_id: 16, episodes[2].episode_id: 16}


def test_a_key_error_inside_the_pipe_is_reported_as_itself(store, tmp_path, monkeypatch):
    episodes = seed(store, 3)
    monkeypatch.setenv("EMILIA_TEST_KEYERROR_EPISODE", episodes[0].episode_id)
    store.delete(episodes[2].audio_key)  # this one really vanished after batching
    outcome = run(store, episodes, tmp_path, workers=1, factory="pool_doubles:key_error_on")
    errors = dict(zip(outcome.status["episode_id"], outcome.status["error"], strict=True))
    assert errors[episodes[0].episode_id] == f"{episodes[0].audio_key}: KeyError: 'speaker_embedding'"
    assert errors[episodes[1].episode_id] is None
    assert errors[episodes[2].episode_id] == f"{episodes[2].audio_key}: object vanished from the store"


def test_unreadable_input_is_probed_and_never_reaches_a_worker(store, tmp_path):
    episodes = seed(store, 2)
    store.put_bytes(episodes[1].audio_key, b"")  # emptied after batching
    started: list[str] = []
    outcome = run(store, episodes, tmp_path, workers=1,
                  on_event=lambda e: started.append(e.episode_id) if isinstance(e, EpisodeStarted) else None)
    assert outcome.status["status"].to_list() == ["done", "failed"]
    assert outcome.status["error"][1] == f"{episodes[1].audio_key}: empty file (0 bytes)"
    assert started == [episodes[0].episode_id]


def test_a_worker_that_cannot_load_its_models_fails_the_batch_at_once(store, tmp_path):
    episodes = seed(store, 2)
    t0 = time.monotonic()
    # WorkerLoadError: processed_segments fails the step without retrying it (configuration, not a passing fault)
    with pytest.raises(WorkerLoadError, match="could not start: RuntimeError: CUDA stage requested but libcublas"):
        run(store, episodes, tmp_path, workers=1, factory="pool_doubles:cannot_load")
    assert time.monotonic() - t0 < 120
    status = pl.read_parquet(store.path("processed/_batches/b1.parquet"))
    assert status.is_empty()  # nothing was processed, nothing claimed


def test_a_rerun_resumes_and_redoes_nothing(store, tmp_path):
    episodes = seed(store, 3)
    first = run(store, episodes, tmp_path, workers=1)
    mtimes = {p: p.stat().st_mtime_ns for p in store.root.glob("processed/en/*/*")}
    started: list[str] = []
    again = run(store, episodes, tmp_path, workers=1,
                on_event=lambda e: started.append(e.episode_id) if isinstance(e, EpisodeStarted) else None)
    assert again.status["status"].to_list() == ["resumed"] * 3 and started == []
    assert again.segments.equals(first.segments)
    assert {p: p.stat().st_mtime_ns for p in store.root.glob("processed/en/*/*")} == mtimes


class SlowStore:
    """A remote store: every download takes `delay_s` (the files come from a LocalStore behind it)."""

    def __init__(self, inner: LocalStore, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def get_file(self, key, path):
        time.sleep(self.delay_s)
        self.inner.get_file(key, path)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_downloads_run_ahead_of_the_workers(store, tmp_path, monkeypatch):
    """With downloads as slow as processing, prefetch makes the batch take about one of them, not their sum.

    Both runs are measured in this process: the baseline holds one file at a time (the next download waits until
    the worker is done with the previous file), the other may download ahead."""
    episodes = seed(store, 5)
    monkeypatch.setenv("EMILIA_TEST_PROCESS_S", "1.5")
    remote = SlowStore(store, delay_s=1.5)

    def timed(prefetch_bytes: int, out: str):
        outcome = run_batch("b1", episodes, remote, LocalStore(tmp_path / out), "processed/", PipeConfig(),
                          plan_workers("cpu", cpu_workers=1, cpu_count=2), tmp_path / "work",
                          settings=RunnerSettings(prefetch_bytes=prefetch_bytes, download_threads=1),
                          factory="pool_doubles:sleeper")
        t = outcome.timeline
        ids = [e.episode_id for e in episodes]
        # from the first episode's start to the last one's end: the part prefetch can shorten
        return outcome, max(t[i]["processed"] for i in ids) - min(t[i]["started"] for i in ids), t, ids

    serial, serial_s, _, _ = timed(1, "serial")  # a budget of one file: the next download waits for the worker
    ahead, ahead_s, t, ids = timed(10 * 2**30, "ahead")
    assert serial.status["status"].to_list() == ahead.status["status"].to_list() == ["done"] * 5
    # each next file was local by the time the worker finished the previous one (downloads and processing take
    # equally long, so when the worker starts within one download the two meet: a tenth of a delay of slack)
    assert all(t[ids[i + 1]]["fetched"] < t[ids[i]]["processed"] + 0.15 for i in range(len(ids) - 1)), t
    print(f"prefetch: {ahead_s:.1f} s with downloads ahead, {serial_s:.1f} s one file at a time "
          f"(ratio {ahead_s / serial_s:.2f}; 5 episodes, 1.5 s download and 1.5 s processing each)")
    assert ahead_s < 0.75 * serial_s, (ahead_s, serial_s)


def test_a_worker_overlaps_decoding_with_the_models(store, tmp_path, monkeypatch):
    """With a decode as slow as the model, one worker takes about N model times for N episodes, not N sums.

    Both runs in this process, one worker each: the baseline runs an episode start to end before the next
    (overlap off); the other decodes the next episode on a CPU thread while the current one is in the model."""
    episodes = seed(store, 6)
    decode_s, model_s = 1.0, 1.0
    monkeypatch.setenv("EMILIA_TEST_DECODE_S", str(decode_s))
    monkeypatch.setenv("EMILIA_TEST_PROCESS_S", str(model_s))

    def timed(overlap: bool, out: str):
        outcome = run_batch("b1", episodes, store, LocalStore(tmp_path / out), "processed/", PipeConfig(),
                            plan_workers("cpu", cpu_workers=1, cpu_count=2), tmp_path / "work",
                            settings=RunnerSettings(overlap=overlap), factory="pool_doubles:slow_stages")
        t = outcome.timeline
        ids = [e.episode_id for e in episodes]
        # from the first episode handed to the worker to the last one exported: the worker's wall time
        return outcome, max(t[i]["processed"] for i in ids) - min(t[i]["sent"] for i in ids), t, ids

    serial, serial_s, _, _ = timed(False, "serial")
    overlapped, overlap_s, t, ids = timed(True, "overlap")
    assert serial.status["status"].to_list() == overlapped.status["status"].to_list() == ["done"] * 6
    assert overlapped.status["attempts"].to_list() == [1] * 6
    n = len(episodes)
    assert serial_s >= n * (decode_s + model_s)  # the baseline pays the sum, episode after episode
    # the next episode entered the model as soon as the previous one left it: its decode was already done
    order = sorted(ids, key=lambda i: t[i]["started"])  # downloads finish in any order; the worker's own order
    gaps = [round(t[order[i + 1]]["started"] - t[order[i]]["inferred"], 2) for i in range(n - 1)]
    assert max(gaps) < 0.5 * decode_s, (gaps, overlap_s, serial_s, t)
    # close to the larger of the two per episode (plus the first decode), not their sum
    assert overlap_s < n * max(decode_s, model_s) + decode_s + 1.5, (overlap_s, serial_s)
    assert overlap_s < 0.7 * serial_s, (overlap_s, serial_s)
