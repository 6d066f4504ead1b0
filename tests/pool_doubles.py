"""Processors for worker-pool tests: the real pipeline, with one misfortune each, decided inside the worker.

Workers are spawned processes, so these are named by "module:function" (the runner's `factory`) and get their
instructions from environment variables the test sets before the pool starts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from emilia_pipe.pipeline import EmiliaPipeline


class _Double(EmiliaPipeline):
    """The misfortune strikes in the model stages (`infer`), where a GPU would run out of memory or crash; `process`
    (a worker without overlap) goes through the same three parts."""

    def prepare(self, path, episode_id, out_dir, language_hint=None, episode_meta=None):
        meta = dict(episode_meta or {})
        if self.config.dnsmos is not None:  # which config built this worker: the normal or the reduced one
            meta["dnsmos_batch_size"] = self.config.dnsmos.batch_size
        return super().prepare(path, episode_id, out_dir, language_hint, meta)

    def infer(self, prepared):
        self.misfortune(prepared.episode_id)
        return super().infer(prepared)

    def misfortune(self, episode_id: str) -> None:
        pass


def _once(flag_dir: str, episode_id: str) -> bool:
    """True the first time it is asked about an episode (across processes: a file marks it)."""
    flag = Path(flag_dir) / f"{episode_id}.once"
    try:
        flag.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


class OomOnce(_Double):
    """Runs out of GPU memory the first time it meets EMILIA_TEST_OOM_EPISODE (a real torch OOM error)."""

    def misfortune(self, episode_id: str) -> None:
        if episode_id == os.environ["EMILIA_TEST_OOM_EPISODE"] and _once(os.environ["EMILIA_TEST_FLAGS"], episode_id):
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class DiesOn(_Double):
    """SIGKILLs its own process whenever it meets EMILIA_TEST_DIE_EPISODE (a crash no handler can catch)."""

    def misfortune(self, episode_id: str) -> None:
        if episode_id == os.environ["EMILIA_TEST_DIE_EPISODE"]:
            os.kill(os.getpid(), signal.SIGKILL)


class KeyErrorOn(_Double):
    """A bug inside the pipe that happens to raise KeyError (it must not read as a vanished object)."""

    def misfortune(self, episode_id: str) -> None:
        if episode_id == os.environ["EMILIA_TEST_KEYERROR_EPISODE"]:
            raise KeyError("speaker_embedding")


class Sleeper:
    """A GPU stand-in for overlap tests: takes exactly EMILIA_TEST_PROCESS_S per episode, whatever the machine's load,
    and writes an episode with no segments (so the time is the pipe's, not the upload's)."""

    def __init__(self, config: Any):
        self.config = config

    def process(self, path, episode_id, out_dir, language_hint=None, episode_meta=None):
        from emilia_pipe.export import write_episode
        from emilia_pipe.pipeline import EpisodeResult

        time.sleep(float(os.environ["EMILIA_TEST_PROCESS_S"]))
        files = write_episode(Path(out_dir), np.zeros(0, np.float32), 24000, [], {"episode_id": episode_id})
        return EpisodeResult(episode_id, language_hint or "und", 60.0, [], [], {"gpu": 1.0}, files)


class SlowStages:
    """Overlap tests: a decode that takes EMILIA_TEST_DECODE_S (the real `audio.standardize`, padded by a sleep to
    that length whatever the machine's load) and a model that takes EMILIA_TEST_PROCESS_S; the export writes an
    episode with no segments. Its three parts are the pipeline's (`prepare`, `infer`, `finish`)."""

    def __init__(self, config: Any):
        self.config = config

    def prepare(self, path, episode_id, out_dir, language_hint=None, episode_meta=None):
        from emilia_pipe.audio import standardize
        from emilia_pipe.pipeline import Prepared

        t0 = time.perf_counter()
        audio = standardize(path)
        time.sleep(max(0.0, float(os.environ["EMILIA_TEST_DECODE_S"]) - (time.perf_counter() - t0)))
        return Prepared(episode_id, Path(out_dir), language_hint, dict(episode_meta or {}), audio,
                        {"standardize": time.perf_counter() - t0})

    def infer(self, prepared):
        from emilia_pipe.pipeline import Inferred

        time.sleep(float(os.environ["EMILIA_TEST_PROCESS_S"]))
        prepared.timings["gpu"] = float(os.environ["EMILIA_TEST_PROCESS_S"])
        return Inferred(prepared, np.zeros(0, np.float32), prepared.audio.size / 24000,
                        prepared.language_hint or "und", [], [], {})

    def finish(self, inferred):
        from emilia_pipe.export import write_episode
        from emilia_pipe.pipeline import EpisodeResult

        p = inferred.prepared
        files = write_episode(p.out_dir, inferred.vocals, 24000, [], {"episode_id": p.episode_id})
        return EpisodeResult(p.episode_id, inferred.language, inferred.duration, [], [], p.timings, files)

    def process(self, path, episode_id, out_dir, language_hint=None, episode_meta=None):
        return self.finish(self.infer(self.prepare(path, episode_id, out_dir, language_hint, episode_meta)))


def slow_stages(config: Any) -> SlowStages:
    return SlowStages(config)


def oom_once(config: Any) -> OomOnce:
    return OomOnce(config)


def dies_on(config: Any) -> DiesOn:
    return DiesOn(config)


def key_error_on(config: Any) -> KeyErrorOn:
    return KeyErrorOn(config)


def sleeper(config: Any) -> Sleeper:
    return Sleeper(config)


def cannot_load(config: Any) -> Any:
    raise RuntimeError("CUDA stage requested but libcublas.so.12 is missing")
