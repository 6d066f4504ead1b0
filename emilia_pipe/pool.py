"""Worker processes of a batch run: each loads the models once, pinned to its device, and processes episodes.

The parent (`emilia_pipe.runner`) hands each worker episodes over the worker's own pipe (one at a time, or with
overlap up to `episodes_ahead` not yet through the models, see `_StagedWorker`) and hears back on the same pipe
(one pipe per worker: a worker killed in the middle of a write can never block the others).
A worker is a `spawn`ed process, so it starts clean (no CUDA context or thread pool inherited from the parent) and
`CUDA_VISIBLE_DEVICES` is set before any GPU library loads. A worker that dies (a crash, SIGKILL, the kernel's OOM
killer) is noticed by its exit, not by a timeout; one whose GPU ran out of memory reports it and exits, so the
memory the failed call left behind goes with it.

Nothing in this module imports the ML stack: the worker imports it after pinning its device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emilia_pipe.devices import WorkerSlot

# The processor factory a worker builds: "module:function", called with the PipeConfig; the result needs
# `process(path, episode_id, out_dir, language_hint=..., episode_meta=...)` like `EmiliaPipeline`.
DEFAULT_FACTORY = "emilia_pipe.pool:build_pipeline"

_OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation", "cuda_error_out_of_memory")


def build_pipeline(config: Any) -> Any:
    from emilia_pipe.pipeline import EmiliaPipeline

    return EmiliaPipeline(config)


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError, ONNX Runtime's and CTranslate2's allocation failures, or a MemoryError."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return any(m in text for m in _OOM_MARKERS)


def reduced_config(config: Any) -> Any:
    """The same pipe with half the separation and ASR batches (and DNSMOS windows), for a retry after an OOM."""
    changes: dict[str, Any] = {}
    for name, attr in (("separation", "batch_windows"), ("asr", "batch_size"), ("dnsmos", "batch_size")):
        stage = getattr(config, name, None)
        if stage is not None and hasattr(stage, attr):
            changes[name] = dataclasses.replace(stage, **{attr: max(1, getattr(stage, attr) // 2)})
    return dataclasses.replace(config, **changes) if changes else config


@dataclass(frozen=True)
class Task:
    """One episode for one worker; paths are on the pod's local disk."""

    episode_id: str
    audio_path: str
    out_dir: str
    language_hint: str | None
    meta: dict[str, Any]
    attempt: int = 1


def _worker_main(slot: WorkerSlot, config: Any, factory: str, threads: int, one_shot: bool, conn: Any,
                 overlap: bool = False) -> None:
    # Pin the device before anything can load CUDA: from here on this worker's GPU is cuda:0.
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.visible_devices
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop (Ctrl-C reaches the group)
    pid = os.getpid()
    try:
        module, _, name = factory.partition(":")
        processor = getattr(importlib.import_module(module), name)(config)
        staged = overlap and all(hasattr(processor, m) for m in ("prepare", "infer", "finish"))
        # With overlap, decoding and encoding threads run beside the models: torch's own threads leave them their
        # cores (OpenMP threads that wait for a core taken by a decoder stall every small op).
        _set_threads(max(1, threads - _StagedWorker.CPU_THREADS) if staged else threads)
        devices = processor.runtime_devices() if hasattr(processor, "runtime_devices") else {}
        backends = processor.runtime_backends() if hasattr(processor, "runtime_backends") else {}
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails the batch with it
        conn.send({"kind": "fatal", "slot": slot.index, "pid": pid, "error": _describe(err),
                     "traceback": traceback.format_exc(limit=20)})
        return
    conn.send({"kind": "ready", "slot": slot.index, "pid": pid, "devices": devices, "backends": backends,
               "overlap": staged})
    if staged:
        _StagedWorker(slot, processor, one_shot, conn).run()
    else:
        _serial_loop(slot, processor, one_shot, conn)


def _serial_loop(slot: WorkerSlot, processor: Any, one_shot: bool, conn: Any) -> None:
    """One episode at a time, start to end (`processor.process`): a processor without stages, or overlap off."""
    from emilia_pipe.audio import AudioError

    pid = os.getpid()
    while True:
        try:
            task: Task | None = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        conn.send({"kind": "started", "slot": slot.index, "pid": pid, "episode_id": task.episode_id})
        t0 = time.perf_counter()
        try:
            result = processor.process(Path(task.audio_path), task.episode_id, Path(task.out_dir),
                                       language_hint=task.language_hint, episode_meta=task.meta)
        except AudioError as err:
            conn.send({"kind": "failed", "slot": slot.index, "pid": pid, "episode_id": task.episode_id,
                         "error": err.reason, "oom": False})
        except Exception as err:  # one bad episode never takes the worker down with it
            oom = is_out_of_memory(err)
            conn.send({"kind": "failed", "slot": slot.index, "pid": pid, "episode_id": task.episode_id,
                         "error": _describe(err), "oom": oom, "traceback": traceback.format_exc(limit=20)})
            if oom:
                return  # exit, so whatever the failed call still holds on the GPU is released
        else:
            conn.send(_done_message(slot, pid, task, result, time.perf_counter() - t0))
        if one_shot:
            return


def _done_message(slot: WorkerSlot, pid: int, task: Task, result: Any, wall_s: float) -> dict[str, Any]:
    return {"kind": "done", "slot": slot.index, "pid": pid, "episode_id": task.episode_id,
            "language": result.language, "duration_s": result.duration_s, "speech_s": result.speech_s,
            "segments": len(result.segments), "stage_seconds": dict(result.stage_seconds), "wall_s": wall_s}


class _StagedWorker:
    """Overlap inside one worker: the next episode's `prepare` (decode, resample) and the previous one's `finish`
    (MP3 encode, index) run on CPU threads while this thread runs `infer` (the models) for the current one.

    The parent sends up to `RunnerSettings.episodes_ahead` episodes that have not left the models yet; each is
    prepared as soon as it arrives. Messages: `started` when an episode enters the models, `inferred` when it leaves
    them (the parent may then send the next), `done` / `failed` when it is exported or has failed. After an
    out-of-memory error the worker stops taking episodes, lets the exports under way finish, and exits; episodes it
    had only prepared go back to the parent's queue when it sees the exit.
    """

    MAX_EXPORTING = 2  # episodes waiting for or in `finish`: bounds the vocals held in memory
    CPU_THREADS = 2  # prepare + finish threads

    def __init__(self, slot: WorkerSlot, processor: Any, one_shot: bool, conn: Any):
        self.slot, self.processor, self.one_shot, self.conn = slot, processor, one_shot, conn
        self.pid = os.getpid()
        self._send_lock = threading.Lock()
        self._cpu = ThreadPoolExecutor(self.CPU_THREADS, thread_name_prefix="emilia-cpu")
        self._inbox: queue.Queue[tuple[Task, Future, float] | None] = queue.Queue()
        self._stopping = threading.Event()  # the parent asked us to stop, or an error means we must exit

    def send(self, msg: dict[str, Any]) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError):  # a parent gone away: the recv side says so
            self.conn.send({"slot": self.slot.index, "pid": self.pid, **msg})

    def _receive(self) -> None:
        while True:
            try:
                task: Task | None = self.conn.recv()
            except (EOFError, OSError):
                task = None
            if task is None:
                self._stopping.set()
                self._inbox.put(None)
                return
            try:
                future = self._cpu.submit(self.processor.prepare, Path(task.audio_path), task.episode_id,
                                          Path(task.out_dir), language_hint=task.language_hint,
                                          episode_meta=task.meta)
            except RuntimeError:  # the worker is exiting (out of memory): the parent requeues what it sent
                return
            self._inbox.put((task, future, time.perf_counter()))

    def run(self) -> None:
        threading.Thread(target=self._receive, name="emilia-recv", daemon=True).start()
        exporting: set[Future] = set()
        try:
            while not self._stopping.is_set():
                item = self._inbox.get()
                if item is None or self._stopping.is_set():
                    break
                task, future, t0 = item
                try:
                    prepared = future.result()
                except Exception as err:  # noqa: BLE001 - unusable input, or a bug: recorded against the episode
                    if not self._failed(task, err):
                        break
                    if self.one_shot:
                        break
                    continue
                self.send({"kind": "started", "episode_id": task.episode_id})
                try:
                    inferred = self.processor.infer(prepared)
                except Exception as err:  # noqa: BLE001 - one bad episode never takes the worker down with it
                    del prepared
                    if not self._failed(task, err):
                        break  # out of memory: exit, so what the failed call holds on the GPU is released
                    if self.one_shot:
                        break
                    continue
                del prepared
                self.send({"kind": "inferred", "episode_id": task.episode_id})
                exporting = {f for f in exporting if not f.done()}
                while len(exporting) >= self.MAX_EXPORTING:
                    _, exporting = wait(exporting, return_when=FIRST_COMPLETED)
                exporting.add(self._cpu.submit(self._finish, task, inferred, t0))
                del inferred
                if self.one_shot:
                    break
        finally:
            wait(exporting)
            self._cpu.shutdown(wait=True, cancel_futures=True)

    def _finish(self, task: Task, inferred: Any, t0: float) -> None:
        try:
            result = self.processor.finish(inferred)
        except Exception as err:  # noqa: BLE001 - recorded against the episode
            if not self._failed(task, err):
                self._stopping.set()
                self._inbox.put(None)
            return
        self.send(_done_message(self.slot, self.pid, task, result, time.perf_counter() - t0))

    def _failed(self, task: Task, err: Exception) -> bool:
        """Report the episode as failed; False when the worker must exit (out of memory)."""
        from emilia_pipe.audio import AudioError

        if isinstance(err, AudioError):
            self.send({"kind": "failed", "episode_id": task.episode_id, "error": err.reason, "oom": False})
            return True
        oom = is_out_of_memory(err)
        self.send({"kind": "failed", "episode_id": task.episode_id, "error": _describe(err), "oom": oom,
                   "traceback": "".join(traceback.format_exception(err, limit=20))})
        if oom:
            self._stopping.set()
        return not oom


def _set_threads(threads: int) -> None:
    # `import silero_vad` sets torch to one thread process-wide; give each worker its share of the cores instead.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def exit_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words ("killed by SIGKILL", "exited with status 3")."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


@dataclass
class Worker:
    slot: WorkerSlot
    process: Any
    conn: Any  # the parent's end of the worker's pipe
    one_shot: bool
    ready: bool = False
    tasks: dict[str, Task] = field(default_factory=dict)  # sent and not yet done or failed, in the order sent
    started: set[str] = field(default_factory=set)  # episodes that entered the models
    inferred: set[str] = field(default_factory=set)  # episodes that left the models (being exported)
    devices: dict[str, str] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    overlap: bool = False  # the worker runs prepare / infer / finish of different episodes at once
    retiring: bool = False  # it said it will exit (after an OOM): its exit is expected

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def task(self) -> Task | None:
        """The episode in the models (else the oldest one sent), None when the worker holds none."""
        for eid, task in self.tasks.items():
            if eid in self.started and eid not in self.inferred:
                return task
        return next(iter(self.tasks.values()), None)

    @property
    def ahead(self) -> int:
        """Episodes sent that have not left the models yet (what `capacity` bounds)."""
        return sum(1 for eid in self.tasks if eid not in self.inferred)

    def can_take(self, episodes_ahead: int) -> bool:
        """Whether it may be sent another episode: a serial (or one-shot) worker only when it holds none, an
        overlapping one while fewer than `episodes_ahead` of its episodes have yet to leave the models."""
        if self.one_shot or not self.overlap:
            return not self.tasks
        return self.ahead < episodes_ahead


class WorkerPool:
    """Starts, feeds, watches and replaces the worker processes of one batch run."""

    def __init__(self, slots: tuple[WorkerSlot, ...], config: Any, threads: int, factory: str = DEFAULT_FACTORY,
                 overlap: bool = False, episodes_ahead: int = 2):
        self._ctx = mp.get_context("spawn")
        self.config = config
        self.threads = threads
        self.factory = factory
        self.overlap = overlap
        self.episodes_ahead = max(1, episodes_ahead)
        self.workers: dict[int, Worker] = {}
        for slot in slots:
            self.start(slot)

    def start(self, slot: WorkerSlot, config: Any | None = None, one_shot: bool = False) -> Worker:
        """A fresh worker in `slot` (replacing whatever was there); `config` overrides the pool's for it."""
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(slot, config or self.config, self.factory, self.threads, one_shot, child_end,
                  self.overlap and not one_shot),
            name=f"emilia-worker-{slot.label}",
            daemon=True,
        )
        proc.start()
        child_end.close()  # the worker holds it now; closing ours lets a dead worker show as EOF
        worker = Worker(slot, proc, parent_end, one_shot)
        self.workers[slot.index] = worker
        return worker

    def send(self, worker: Worker, task: Task) -> None:
        worker.tasks[task.episode_id] = task
        # If it died meanwhile, `dead()` reports it with the task still assigned.
        with contextlib.suppress(OSError):
            worker.conn.send(task)

    def idle(self) -> list[Worker]:
        """Workers that can take another episode now, the least loaded first."""
        free = [w for w in self.workers.values() if w.ready and not w.retiring and w.can_take(self.episodes_ahead)]
        return sorted(free, key=lambda w: (len(w.tasks), w.slot.index))

    def messages(self, timeout_s: float) -> list[dict[str, Any]]:
        """Whatever the workers have said, waiting up to `timeout_s` for the first word."""
        conns = {w.conn: w for w in self.workers.values() if not w.conn.closed}
        out: list[dict[str, Any]] = []
        for conn in mp_connection.wait(list(conns), timeout=timeout_s):
            while True:
                try:
                    if not conn.poll():
                        break
                    out.append(conn.recv())
                except (EOFError, OSError):
                    conn.close()  # the worker is gone; `dead()` picks it up once its process has exited
                    break
        return out

    def dead(self) -> list[Worker]:
        """Workers whose process has ended (and not yet been replaced)."""
        out = []
        for w in self.workers.values():
            if not w.process.is_alive():
                w.process.join(0)
                out.append(w)
        return out

    def close(self, grace_s: float = 10.0) -> None:
        """Ask every worker to stop, then make sure: a batch run never leaves a process holding a GPU."""
        for w in self.workers.values():
            if w.process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(None)
        deadline = time.monotonic() + grace_s
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.kill()
                w.process.join(5)
            w.conn.close()
