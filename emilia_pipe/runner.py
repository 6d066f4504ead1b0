"""The batch runner: one batch of episodes through the worker pool, resumable episode by episode.

No Dagster here: `processed_segments` and `emilia-forge run-batch` / `process` call `run_batch` and turn its events
into logs and metadata. What happens to a batch:

- **Resume.** An episode is complete once `processed/_episodes/<episode_id>.json` exists (written after its MP3s and
  `all_segments.json`); a re-run skips it and redoes every other one from scratch, after removing leftovers of a
  run killed mid-upload, so no segment is ever duplicated.
- **Prefetch.** Download threads copy the batch's audio to the pod's disk ahead of the workers, in manifest order,
  holding at most `prefetch_bytes` at a time; the first worker starts as soon as the first file is local.
- **Workers.** One process per GPU × `WORKERS_PER_GPU` (or N CPU workers), each loading the models once
  (`emilia_pipe.pool`). With `overlap` (the default) a worker holds up to `episodes_ahead` episodes that have not
  left its models: it decodes the next one and exports the previous one on CPU threads while the current one is in
  the models, so the GPU does not wait for decoding or MP3 encoding.
- **Upload in the background.** A finished episode is uploaded by upload threads while its worker goes on with the
  next one; its completion marker is written last.
- **Failures.** Unreadable input, a pipe error or a failed upload is recorded against the episode, with its key and
  the reason, and the batch goes on. A worker that dies (crash, SIGKILL, OOM killer) or whose GPU runs out of memory
  does not lose the batch: its episode is retried once on a fresh worker (after an OOM, a worker with half the
  separation and ASR batches), then recorded as failed; the worker is replaced. Episodes the worker had only
  decoded go back to the queue without counting an attempt (the one in its models is the one blamed). A worker
  that cannot even load its models fails the batch at once, with the worker's error: that is a configuration
  problem, not a bad episode.
- **Records.** The status table (`processed/_batches/<batch>.parquet`, one row per episode) is rewritten as episodes
  finish; the catalogue (`<batch>.segments.parquet`) and the batch's summary for operators (`<batch>.summary.json`,
  `emilia_pipe.batch_report`) are written at the end.
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from emilia_pipe.batch_report import batch_summary, write_summary
from emilia_pipe.catalogue import SEGMENT_SCHEMA, STATUS_SCHEMA, segment_rows
from emilia_pipe.devices import PoolPlan
from emilia_pipe.export import ALL_SEGMENTS
from emilia_pipe.failures import DOWNLOAD_FAILED, UPLOAD_FAILED
from emilia_pipe.keys import join, safe_language
from emilia_pipe.pool import DEFAULT_FACTORY, Task, Worker, WorkerPool, exit_reason, reduced_config
from emilia_store import ObjectStore, cached_copy, delete_prefix, write_parquet
from emilia_store.layout import batch_segments_key, batch_status_key, episode_dir, episode_done_key

GiB = 2**30


class RunnerError(RuntimeError):
    """The batch cannot go on at all (a worker cannot load its models, every worker keeps dying at start)."""


class WorkerLoadError(RunnerError):
    """A worker reported that it cannot build its pipeline (a missing model, a CUDA stage its backend cannot serve):
    a configuration problem that trying again on the same pod does not fix."""


@dataclass(frozen=True)
class Episode:
    """One row of a batch manifest."""

    episode_id: str
    audio_key: str
    language: str
    bytes: int
    source: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Episode:
        return cls(row["episode_id"], row["audio_key"], row["language"], int(row["bytes"] or 0), row["source"])


@dataclass(frozen=True)
class Probe:
    """What probing found before the run (`raw_episodes`, on a CPU pod); without it the runner probes itself."""

    ok: bool
    reason: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class RunnerSettings:
    """How hard a batch run pushes its pod.

    Attributes:
        prefetch_bytes: audio on local disk ahead of the workers, at most (a single larger file still goes).
        download_threads: concurrent downloads from the store.
        upload_threads: concurrent episode uploads to the store.
        max_attempts: tries per episode when its worker dies or runs out of memory (2 = one retry).
        overlap: inside each worker, decode the next episode and export the previous one while the current one is in
            the models (`EmiliaPipeline.prepare` / `infer` / `finish`); off, a worker runs one episode start to end.
        episodes_ahead: with overlap, episodes a worker holds that have not left its models yet (the one in the
            models plus those being decoded or waiting); 2 keeps one decoded episode ready.
        max_startup_failures: workers in a row that die before loading their models, before the batch fails.
        progress_interval_s: at least this often a progress event (and on every finished episode).
        status_interval_s: the status table is rewritten at most this often while the batch runs.
    """

    prefetch_bytes: int = 16 * GiB
    download_threads: int = 4
    upload_threads: int = 2
    max_attempts: int = 2
    max_startup_failures: int = 3
    overlap: bool = True
    episodes_ahead: int = 2
    progress_interval_s: float = 60.0
    status_interval_s: float = 5.0


# ---- events: what a caller (the asset, the CLI) hears while the batch runs ----------------------------------------


@dataclass(frozen=True)
class RunnerEvent:
    message: str
    level: str = "info"  # info | warning | error


@dataclass(frozen=True)
class WorkerReady(RunnerEvent):
    worker: str = ""
    pid: int = 0
    devices: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeStarted(RunnerEvent):
    episode_id: str = ""
    worker: str = ""
    pid: int = 0
    attempt: int = 1


@dataclass(frozen=True)
class EpisodeFinished(RunnerEvent):
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerLost(RunnerEvent):
    worker: str = ""
    pid: int = 0
    episode_id: str | None = None
    reason: str = ""
    retried: bool = False


@dataclass(frozen=True)
class Progress(RunnerEvent):
    finished: int = 0
    total: int = 0
    audio_hours_per_wall_hour: float = 0.0
    eta_s: float | None = None


EventHandler = Callable[[RunnerEvent], None]


@dataclass
class BatchOutcome:
    batch_id: str
    status: pl.DataFrame
    segments: pl.DataFrame
    stage_seconds: dict[str, float]
    wall_s: float
    plan: PoolPlan | None
    worker_devices: dict[str, dict[str, str]]
    worker_losses: list[str]
    timeline: dict[str, dict[str, float]]  # per episode: fetched / sent / started / inferred / processed / uploaded
    worker_backends: dict[str, dict[str, str]] = field(default_factory=dict)  # per worker: how each stage runs
    summary: dict[str, Any] = field(default_factory=dict)  # emilia_pipe.batch_report, as written to the store

    def count(self, status: str) -> int:
        return self.status.filter(pl.col("status") == status).height

    @property
    def failed_fraction(self) -> float:
        return self.count("failed") / self.status.height if self.status.height else 0.0

    @property
    def hours_in(self) -> float:
        return float(self.status["duration_s"].fill_null(0).sum()) / 3600

    @property
    def processed_hours(self) -> float:
        return float(self.status.filter(pl.col("status") == "done")["duration_s"].sum() or 0) / 3600

    @property
    def hours_out(self) -> float:
        return float(self.segments["duration"].sum() or 0) / 3600


def publish_episode(store: ObjectStore, processed_prefix: str, out_dir: Path, language: str, episode_id: str,
                    summary: dict[str, Any]) -> None:
    """Upload one finished episode: leftovers of an interrupted upload first removed, `all_segments.json` after the
    MP3s, the completion marker last, so a reader never takes a half-uploaded episode for a finished one."""
    prefix = episode_dir(processed_prefix, language, episode_id)
    delete_prefix(store, prefix)
    for path in sorted(out_dir.iterdir(), key=lambda p: p.name == ALL_SEGMENTS):
        store.put_file(path, prefix + path.name)
    store.put_bytes(episode_done_key(processed_prefix, episode_id), json.dumps(summary).encode())


def read_sidecar(store: ObjectStore, audio_key: str) -> dict[str, Any] | None:
    """The ingest sidecar next to the raw audio (title, url, feed, published, licence...), if there is one."""
    try:
        return json.loads(store.get_bytes(audio_key.rsplit(".", 1)[0] + ".json"))
    except (KeyError, ValueError):
        return None


def run_batch(
    batch_id: str,
    episodes: Iterable[Episode],
    source: ObjectStore,
    sink: ObjectStore,
    processed_prefix: str,
    pipe_config: Any,
    plan: PoolPlan,
    work_dir: Path,
    probes: Mapping[str, Probe] | None = None,
    settings: RunnerSettings = RunnerSettings(),
    on_event: EventHandler | None = None,
    factory: str = DEFAULT_FACTORY,
) -> BatchOutcome:
    """Process every episode of a batch that is not complete yet; see the module docstring for the guarantees.

    Args:
        source: where the raw audio is read (`audio_key`s).
        sink: where `processed/` goes (the same store as `source` in the platform; a local folder for the CLI).
        pipe_config: the `PipeConfig` every worker builds its pipeline from.
        plan: the workers (`emilia_pipe.devices.plan_workers`).
        work_dir: local scratch for downloads and outputs (removed at the end).
        probes: per episode id, what probing found; episodes without one are probed here before processing.
        factory: "module:function" building each worker's processor (tests swap the pipeline).

    Returns:
        The batch's status table, catalogue and timings. Raises `RunnerError` when no worker can start.
    """
    run = _BatchRun(batch_id, list(episodes), source, sink, processed_prefix, pipe_config, plan, work_dir,
                    dict(probes or {}), settings, on_event or (lambda e: None), factory)
    return run.run()


class _Budget:
    """Bytes of audio on local disk; a download waits for room (a file larger than the whole budget still goes)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cv = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> bool:
        with self._cv:
            while self.used and self.used + n > self.limit:
                if stop.is_set():
                    return False
                self._cv.wait(0.5)
            self.used += n
            return not stop.is_set()

    def release(self, n: int) -> None:
        with self._cv:
            self.used = max(0, self.used - n)
            self._cv.notify_all()


@dataclass
class _Item:
    episode: Episode
    path: Path | None = None
    attempt: int = 1
    meta: dict[str, Any] = field(default_factory=dict)


class _BatchRun:
    def __init__(self, batch_id: str, episodes: list[Episode], source: ObjectStore, sink: ObjectStore, pp: str,
                 pipe_config: Any, plan: PoolPlan, work_dir: Path, probes: dict[str, Probe],
                 settings: RunnerSettings, emit: EventHandler, factory: str):
        self.batch_id, self.episodes, self.source, self.sink, self.pp = batch_id, episodes, source, sink, pp
        self.pipe_config, self.plan, self.work_dir, self.probes = pipe_config, plan, work_dir, probes
        self.settings, self.emit, self.factory = settings, emit, factory
        self.rows: dict[str, dict[str, Any]] = {}
        self.catalogue: list[dict[str, Any]] = []
        self.stage_seconds: dict[str, float] = {}
        self.episode_stage_seconds: dict[str, dict[str, float]] = {}  # from each all_segments.json, done or resumed
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.ready: deque[_Item] = deque()
        self.pinned: dict[int, _Item] = {}  # slot -> the OOM retry its reduced worker must take
        self.items: dict[str, _Item] = {}
        self.stop = threading.Event()
        self.budget = _Budget(settings.prefetch_bytes)
        self.timeline: dict[str, dict[str, float]] = {}
        self.losses: list[str] = []
        self.devices: dict[str, dict[str, str]] = {}
        self.backends: dict[str, dict[str, str]] = {}
        self.startup_failures = 0
        self.uploads_in_flight = 0
        self.audio_s_done = 0.0
        self.bytes_done = 0
        self.t0 = time.monotonic()
        self._last_progress = 0.0
        self._last_status = 0.0

    # ---- bookkeeping -----------------------------------------------------------------------------------------------

    def _mark(self, eid: str, what: str) -> None:
        self.timeline.setdefault(eid, {})[what] = time.monotonic() - self.t0

    def _record(self, ep: Episode, state: str, error: str | None = None, attempts: int | None = None,
                worker: str | None = None, **kw: Any) -> None:
        row = {"episode_id": ep.episode_id, "audio_key": ep.audio_key, "status": state, "error": error,
               "language": kw.get("language"), "duration_s": kw.get("duration_s"), "speech_s": kw.get("speech_s"),
               "segments": kw.get("segments"), "wall_s": kw.get("wall_s"), "attempts": attempts, "worker": worker}
        self.rows[ep.episode_id] = row
        level = "warning" if state == "failed" else "info"
        if state == "failed":
            text = f"episode {ep.episode_id} failed: {error}"
        elif state == "resumed":
            text = f"episode {ep.episode_id} already complete (resumed)"
        else:
            text = (f"episode {ep.episode_id}: {kw.get('segments')} segments from "
                    f"{(kw.get('duration_s') or 0) / 60:.1f} min in {kw.get('wall_s') or 0:.1f} s on {worker}")
        self.emit(EpisodeFinished(f"[{len(self.rows)}/{len(self.episodes)}] {text}", level, row))
        self._write_status(force=False)
        self._progress(force=state != "resumed")

    def _status_frame(self) -> pl.DataFrame:
        order = [e.episode_id for e in self.episodes if e.episode_id in self.rows]
        return pl.DataFrame([self.rows[e] for e in order], schema=STATUS_SCHEMA)

    def _write_status(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.settings.status_interval_s:
            return
        self._last_status = now
        write_parquet(self.sink, batch_status_key(self.pp, self.batch_id), self._status_frame())

    def _progress(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.settings.progress_interval_s:
            return
        self._last_progress = now
        wall = now - self.t0
        rate = self.audio_s_done / wall if wall > 0 else 0.0
        remaining_s = 0.0
        for ep in self.episodes:
            if ep.episode_id in self.rows:
                continue
            probe = self.probes.get(ep.episode_id)
            if probe and probe.duration_s:
                remaining_s += probe.duration_s
            elif self.bytes_done:
                remaining_s += ep.bytes * self.audio_s_done / self.bytes_done
        eta = remaining_s / rate if rate > 0 else None
        finished = len(self.rows)
        eta_text = f", ETA {eta / 60:.1f} min" if eta is not None and finished < len(self.episodes) else ""
        self.emit(Progress(
            f"progress: {finished}/{len(self.episodes)} episodes, {self.audio_s_done / 3600:.2f} audio h in "
            f"{wall / 60:.1f} min ({rate:.1f} audio h per wall h){eta_text}",
            finished=finished, total=len(self.episodes), audio_hours_per_wall_hour=rate, eta_s=eta,
        ))

    # ---- the run ---------------------------------------------------------------------------------------------------

    def run(self) -> BatchOutcome:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        todo = self._resume_pass()
        pool: WorkerPool | None = None
        downloads = ThreadPoolExecutor(self.settings.download_threads, thread_name_prefix="emilia-fetch")
        uploads = ThreadPoolExecutor(self.settings.upload_threads, thread_name_prefix="emilia-upload")
        feeder = threading.Thread(target=self._feed, args=(todo, downloads), name="emilia-feeder", daemon=True)
        try:
            if todo:
                pool = WorkerPool(self.plan.slots, self.pipe_config, self.plan.threads_per_worker, self.factory,
                                  overlap=self.settings.overlap, episodes_ahead=self.settings.episodes_ahead)
                self.emit(RunnerEvent(f"batch {self.batch_id}: {len(todo)} of {len(self.episodes)} episodes to "
                                      f"process on {self.plan.describe()}"))
                feeder.start()
                self._loop(pool, uploads, len(todo))
        finally:
            self.stop.set()
            if pool is not None:
                pool.close()
            downloads.shutdown(wait=True, cancel_futures=True)
            uploads.shutdown(wait=True)
            self._drain_events()  # uploads that finished while shutting down still count
            self._write_status(force=True)
        segments = pl.DataFrame(self.catalogue, schema=SEGMENT_SCHEMA).sort("id")
        write_parquet(self.sink, batch_segments_key(self.pp, self.batch_id), segments)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self._progress(force=True)
        wall_s, status = time.monotonic() - self.t0, self._status_frame()
        summary = batch_summary(self.batch_id, status, segments, self.episode_stage_seconds, self.devices, wall_s)
        write_summary(self.sink, self.pp, summary)
        return BatchOutcome(self.batch_id, status, segments, self.stage_seconds, wall_s, self.plan, self.devices,
                            self.losses, self.timeline, self.backends, summary)

    def _resume_pass(self) -> list[Episode]:
        """Finished episodes are recorded as resumed (their catalogue rows read back); the rest are returned."""

        def check(ep: Episode) -> tuple[dict[str, Any], dict[str, Any]] | None:
            try:
                done = json.loads(self.sink.get_bytes(episode_done_key(self.pp, ep.episode_id)))
                doc = json.loads(self.sink.get_bytes(episode_dir(self.pp, done["language"], ep.episode_id)
                                                     + ALL_SEGMENTS))
            except KeyError:
                return None
            return done, doc

        with ThreadPoolExecutor(16, thread_name_prefix="emilia-resume") as ex:
            found = list(ex.map(check, self.episodes))
        todo = []
        for ep, hit in zip(self.episodes, found, strict=True):
            if hit is not None:
                done, doc = hit
                self.catalogue += segment_rows(self.pp, self.batch_id, _ep_dict(ep), done, doc)
                self.episode_stage_seconds[ep.episode_id] = _doc_stage_seconds(doc)
                self._record(ep, "resumed", **{k: done.get(k) for k in ("language", "duration_s", "speech_s",
                                                                          "segments", "wall_s")})
                continue
            probe = self.probes.get(ep.episode_id)
            if probe is not None and not probe.ok:
                self._record(ep, "failed", f"{ep.audio_key}: {probe.reason}", duration_s=probe.duration_s)
                continue
            todo.append(ep)
        return todo

    def _feed(self, todo: list[Episode], downloads: ThreadPoolExecutor) -> None:
        """Downloads in manifest order, each waiting for room in the disk budget."""
        for ep in todo:
            if not self.budget.acquire(ep.bytes, self.stop):
                return
            fut = downloads.submit(self._fetch, ep)
            fut.add_done_callback(lambda f, ep=ep: self._fetched(ep, f))

    def _fetch(self, ep: Episode) -> tuple[Path, dict[str, Any]]:
        local = cached_copy(self.source, ep.audio_key, self.work_dir / "audio", ep.bytes)
        if ep.episode_id not in self.probes:
            from emilia_pipe.audio import probe

            probe(local)  # raises AudioError naming the file: recorded, never sent to a GPU
        meta = {"audio_key": ep.audio_key, "source": ep.source, "batch_id": self.batch_id,
                "source_metadata": read_sidecar(self.source, ep.audio_key)}
        return local, meta

    def _fetched(self, ep: Episode, fut: Future) -> None:
        from emilia_pipe.audio import AudioError

        try:
            local, meta = fut.result()
        except KeyError:
            self.events.put(("fetch_failed", ep, f"{ep.audio_key}: object vanished from the store"))
        except AudioError as err:
            self.events.put(("fetch_failed", ep, f"{ep.audio_key}: {err.reason}"))
        except BaseException as err:  # noqa: BLE001 - a store error: recorded against the episode
            self.events.put(("fetch_failed", ep, f"{ep.audio_key}: {DOWNLOAD_FAILED}: {type(err).__name__}: {err}"))
        else:
            self.events.put(("fetched", ep, local, meta))

    def _release_audio(self, item: _Item) -> None:
        """The episode's audio leaves the disk budget (and the disk, when it is our copy)."""
        if item.path is not None and self.work_dir in item.path.parents:
            item.path.unlink(missing_ok=True)
        item.path = None
        self.budget.release(item.episode.bytes)

    def _drain_events(self) -> None:
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            self._on_thread_event(ev)

    def _on_thread_event(self, ev: tuple[Any, ...]) -> None:
        kind, ep = ev[0], ev[1]
        if kind == "fetched":
            item = _Item(ep, ev[2], meta=ev[3])
            self.items[ep.episode_id] = item
            self._mark(ep.episode_id, "fetched")
            self.ready.append(item)
        elif kind == "fetch_failed":
            self.budget.release(ep.bytes)
            self._record(ep, "failed", ev[2])
        elif kind == "uploaded":
            _, _, done, rows, stage_seconds, attempts, worker, doc_stage_seconds = ev
            self.uploads_in_flight -= 1
            self._mark(ep.episode_id, "uploaded")
            self.catalogue += rows
            self.episode_stage_seconds[ep.episode_id] = doc_stage_seconds
            for k, v in stage_seconds.items():
                self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
            self.audio_s_done += done["duration_s"]
            self.bytes_done += ep.bytes
            self._record(ep, "done", attempts=attempts, worker=worker,
                         **{k: done[k] for k in ("language", "duration_s", "speech_s", "segments", "wall_s")})
        elif kind == "upload_failed":
            self.uploads_in_flight -= 1
            self._record(ep, "failed", ev[2], attempts=ev[3], worker=ev[4])

    def _loop(self, pool: WorkerPool, uploads: ThreadPoolExecutor, n_todo: int) -> None:
        def unfinished() -> int:
            return sum(1 for e in self.episodes if e.episode_id not in self.rows)

        while unfinished():
            self._drain_events()
            self._dispatch(pool)
            for msg in pool.messages(timeout_s=0.2):
                self._on_message(pool, uploads, msg)
            for worker in pool.dead():
                self._on_exit(pool, worker, more_work=unfinished() - self.uploads_in_flight > 0)
            self._progress(force=False)

    def _dispatch(self, pool: WorkerPool) -> None:
        while True:
            free = pool.idle()
            if not free:
                return
            worker = free[0]
            item = self.pinned.pop(worker.slot.index, None)
            if item is None:
                if not self.ready:
                    return
                item = self.ready.popleft()
            out_dir = Path(tempfile.mkdtemp(dir=self.work_dir, prefix=f".out-{item.episode.episode_id}-"))
            ep = item.episode
            self._mark(ep.episode_id, "sent")
            pool.send(worker, Task(ep.episode_id, str(item.path), str(out_dir), ep.language, item.meta,
                                   item.attempt))

    def _on_message(self, pool: WorkerPool, uploads: ThreadPoolExecutor, msg: dict[str, Any]) -> None:
        worker = pool.workers.get(msg["slot"])
        if worker is None or worker.pid != msg["pid"]:
            return  # from a worker already replaced
        kind = msg["kind"]
        label = worker.slot.label
        if kind == "fatal":
            raise WorkerLoadError(f"worker {label} (pid {worker.pid}) could not start: {msg['error']}\n"
                              f"{msg.get('traceback', '')}")
        if kind == "ready":
            worker.ready = True
            worker.devices = msg["devices"]
            worker.backends = msg.get("backends", {})
            worker.overlap = bool(msg.get("overlap"))
            self.devices[label] = msg["devices"]
            self.backends[label] = worker.backends
            self.startup_failures = 0
            devices = ", ".join(f"{k}={v}" for k, v in msg["devices"].items()) or "no model stages"
            self.emit(WorkerReady(f"worker {label} (pid {worker.pid}) ready: {devices}", worker=label,
                                  pid=worker.pid or 0, devices=msg["devices"]))
            return
        eid = msg.get("episode_id")
        task = worker.tasks.get(eid)
        if task is None:
            return
        item = self.items[task.episode_id]
        if kind == "started":
            worker.started.add(eid)
            self._mark(task.episode_id, "started")
            self.emit(EpisodeStarted(f"episode {task.episode_id} started on {label} (pid {worker.pid}, "
                                     f"attempt {task.attempt})",
                                     episode_id=task.episode_id, worker=label, pid=worker.pid or 0,
                                     attempt=task.attempt))
            return
        if kind == "inferred":
            worker.inferred.add(eid)  # out of the models: the worker may be sent its next episode
            self._mark(task.episode_id, "inferred")
            return
        del worker.tasks[eid]
        worker.started.discard(eid)
        worker.inferred.discard(eid)
        if worker.one_shot:
            worker.retiring = True  # it exits after this one episode; nothing more may be sent to it
        ep = item.episode
        if kind == "done":
            self._mark(ep.episode_id, "processed")
            self._release_audio(item)
            self.uploads_in_flight += 1
            uploads.submit(self._upload, ep, Path(task.out_dir), msg, task.attempt, label)
            return
        # failed
        shutil.rmtree(task.out_dir, ignore_errors=True)
        if msg.get("oom"):
            worker.retiring = True
            if task.attempt < self.settings.max_attempts:
                item.attempt = task.attempt + 1
                self.pinned[worker.slot.index] = item
                self.emit(WorkerLost(f"worker {label} ran out of memory on {ep.episode_id}: retrying it once on a "
                                     f"fresh worker with smaller separation/ASR batches ({msg['error']})",
                                     "warning", label, worker.pid or 0, ep.episode_id, "out of memory", True))
                self.losses.append(f"{label}: out of memory on {ep.episode_id}")
                return
        self._release_audio(item)
        self._record(ep, "failed", f"{ep.audio_key}: {msg['error']}", attempts=task.attempt, worker=label)

    def _on_exit(self, pool: WorkerPool, worker: Worker, more_work: bool) -> None:
        """A worker's process ended. The episodes it held: the one in its models (or, with none there, those it was
        exporting, else all) is blamed: retried on a fresh worker or, out of attempts, failed; the others (only
        decoded, or waiting) go back to the front of the queue without counting an attempt."""
        label, reason = worker.slot.label, exit_reason(worker.process.exitcode)
        pinned = self.pinned.get(worker.slot.index)
        expected = worker.retiring
        held = list(worker.tasks.values())
        in_models = [t for t in held if t.episode_id in worker.started and t.episode_id not in worker.inferred]
        exporting = [t for t in held if t.episode_id in worker.inferred]
        blamed = {t.episode_id for t in (in_models or exporting or held)}
        if expected and not in_models and not exporting:
            blamed = set()  # it announced its exit (OOM, one-shot): what it held was never started
        front: list[_Item] = []
        requeued: list[_Item] = []
        for task in held:
            item = self.items[task.episode_id]
            shutil.rmtree(task.out_dir, ignore_errors=True)
            if task.episode_id not in blamed:
                requeued.append(item)
                continue
            retry = task.attempt < self.settings.max_attempts
            self.losses.append(f"{label} (pid {worker.pid}) {reason} while processing {task.episode_id}")
            self.emit(WorkerLost(
                f"worker {label} (pid {worker.pid}) {reason} while processing {task.episode_id}; "
                + ("retrying it on a fresh worker" if retry else "giving up on it"),
                "warning", label, worker.pid or 0, task.episode_id, reason, retry,
            ))
            if retry:
                item.attempt = task.attempt + 1
                front.append(item)
            else:
                self._release_audio(item)
                self._record(item.episode, "failed",
                             f"{item.episode.audio_key}: worker {reason} while processing it, "
                             f"{task.attempt} attempts", attempts=task.attempt, worker=label)
        self.ready.extendleft(reversed(front + requeued))
        worker.tasks.clear()
        if not held and not worker.ready and not expected:
            self.startup_failures += 1
            self.losses.append(f"{label} (pid {worker.pid}) {reason} before loading its models")
            if self.startup_failures >= self.settings.max_startup_failures:
                raise RunnerError(f"{self.startup_failures} workers in a row died before loading their models "
                                  f"(last: {label} {reason}); see the run's output for the workers' errors")
        if not more_work and pinned is None and not front and not requeued:
            del pool.workers[worker.slot.index]
            return
        if pinned is not None:
            pool.start(worker.slot, config=reduced_config(self.pipe_config), one_shot=True)
        else:
            pool.start(worker.slot)

    def _upload(self, ep: Episode, out_dir: Path, msg: dict[str, Any], attempt: int, worker: str) -> None:
        try:
            language = safe_language(msg["language"])
            done = {"language": language, "duration_s": round(msg["duration_s"], 3),
                    "speech_s": round(msg["speech_s"], 3), "segments": msg["segments"],
                    "wall_s": round(msg["wall_s"], 3),
                    "all_segments": join(episode_dir(self.pp, language, ep.episode_id), ALL_SEGMENTS)}
            doc = json.loads((out_dir / ALL_SEGMENTS).read_text())
            publish_episode(self.sink, self.pp, out_dir, language, ep.episode_id, done)
            rows = segment_rows(self.pp, self.batch_id, _ep_dict(ep), done, doc)
        except BaseException as err:  # noqa: BLE001 - recorded against the episode; a re-run redoes it
            self.events.put(("upload_failed", ep, f"{ep.audio_key}: {UPLOAD_FAILED}: {type(err).__name__}: {err}",
                             attempt, worker))
        else:
            self.events.put(("uploaded", ep, done, rows, msg["stage_seconds"], attempt, worker,
                             _doc_stage_seconds(doc)))
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)


def _ep_dict(ep: Episode) -> dict[str, Any]:
    return {"episode_id": ep.episode_id, "source": ep.source}


def _doc_stage_seconds(doc: dict[str, Any]) -> dict[str, float]:
    """The stage times an episode's all_segments.json records (what the batch summary adds up)."""
    return {k: float(v) for k, v in ((doc.get("episode") or {}).get("stage_seconds") or {}).items()}
