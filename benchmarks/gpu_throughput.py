"""Audio hours per GPU hour: the whole Emilia pipe over synthetic episodes, through the real runner and worker pool.

    python benchmarks/gpu_throughput.py --models DIR --device cuda --minutes 60 --workers 1,2,3
    python benchmarks/gpu_throughput.py --device cpu --minutes 1          # CI: tiny models, seconds

For each worker count it runs one batch (`emilia_pipe.runner.run_batch`, the code the Dagster asset runs) on one GPU
(or on the CPU) over `--minutes` of speech-like audio made from the bundled samples (shuffled, re-levelled, a little
noise, MP3 at 44.1 kHz like a podcast), and reports:

- `pipe_audio_h_per_gpu_h`: audio hours processed per wall hour of the one GPU, from the first episode handed to a
  worker to the last one uploaded (Emilia-Pipe: 21 on RTX 4090s); `..._with_startup` counts the workers' start and
  model loading too;
- per stage, `stage_audio_h_per_busy_h`: audio hours per hour that stage was running, summed over the workers
  (what the stage would sustain alone on one worker);
- GPU utilisation (mean, median, sampled with nvidia-smi) and peak GPU memory (all processes on the GPU);
- CPU cores used: CPU seconds of the runner and its workers over wall seconds (what a GPU needs beside it);
- the device and execution path each stage really ran on, as every worker read them back from its runtimes
  (`EmiliaPipeline.runtime_devices` / `runtime_backends`), and the model sizes (`DIR/model_sizes.json`).

Writes JSON to `benchmarks/results/gpu_throughput_<device>_<models>.json` unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EMILIA_AUDIO_H_PER_GPU_H = 21.0  # 666.94 h in 240.5 min on 8 RTX 4090s (Emilia-Pipe's paper)
TARGET_AUDIO_H_PER_GPU_H = 200.0
SOURCE_SR = 44_100


def make_episodes(minutes: float, episode_minutes: float, folder: Path, seed: int = 0) -> list[tuple[Path, float]]:
    """Episodes of speech-like audio: the bundled samples in a shuffled order, each piece re-levelled, with a little
    noise, written as 44.1 kHz mono MP3 (128 kbps). Returns (path, seconds) per episode."""
    import lameenc

    from emilia_pipe.audio import decode

    rng = np.random.default_rng(seed)
    pieces = [decode(p, SOURCE_SR) for p in sorted((ROOT / "samples").glob("*.mp3"))]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    total = int(minutes * 60 * SOURCE_SR)
    per = int(episode_minutes * 60 * SOURCE_SR)
    index = 0
    while total > 0:
        n = min(per, total)
        parts, have = [], 0
        while have < n:
            piece = pieces[rng.integers(len(pieces))]
            start = int(rng.integers(0, max(1, piece.size // 4)))
            part = piece[start:] * np.float32(10 ** (rng.uniform(-6, 3) / 20))
            parts.append(part)
            have += part.size
        audio = np.concatenate(parts)[:n]
        audio = audio + np.float32(0.003) * rng.standard_normal(n).astype(np.float32)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        encoder = lameenc.Encoder()
        encoder.set_bit_rate(128)
        encoder.set_in_sample_rate(SOURCE_SR)
        encoder.set_channels(1)
        encoder.set_quality(5)
        path = folder / f"ep{index:03d}.mp3"
        path.write_bytes(encoder.encode(pcm.tobytes()) + encoder.flush())
        out.append((path, n / SOURCE_SR))
        total -= n
        index += 1
    return out


class GpuSampler:
    """nvidia-smi every `interval_s` on one GPU: utilisation % and memory used (all processes), while running."""

    def __init__(self, gpu: str | None, interval_s: float = 0.5):
        self.gpu, self.interval_s = gpu, interval_s
        self.util: list[float] = []
        self.mem_mib: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = gpu is not None and shutil.which("nvidia-smi") is not None

    def _sample(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.gpu}", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                line = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, mem = (float(x) for x in line.split(","))
                self.util.append(util)
                self.mem_mib.append(mem)
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def summary(self) -> dict:
        if not self.util:
            return {"gpu_util_mean_pct": None, "gpu_util_median_pct": None, "gpu_mem_peak_gib": None,
                    "gpu_samples": 0}
        return {"gpu_util_mean_pct": round(statistics.fmean(self.util), 1),
                "gpu_util_median_pct": round(statistics.median(self.util), 1),
                "gpu_mem_peak_gib": round(max(self.mem_mib) / 1024, 2), "gpu_samples": len(self.util)}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_one(workers: int, device: str, episodes: list[tuple[Path, float]], config, root: Path, language: str,
            settings) -> dict:
    from emilia_pipe.devices import plan_workers
    from emilia_pipe.runner import Episode, Probe, run_batch
    from emilia_store import LocalStore

    store = LocalStore(root / f"store-{workers}")
    items, probes = [], {}
    for path, seconds in episodes:
        key = f"raw_audio/{language}/bench/{path.name}"
        store.path(key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, store.path(key))
        eid = f"bench-{path.stem}"
        items.append(Episode(eid, key, language, path.stat().st_size, "bench"))
        probes[eid] = Probe(True, None, seconds)  # probed on a CPU pod before the GPU run, as in production
    if device == "cpu":
        plan = plan_workers("cpu", cpu_workers=workers)
    else:
        plan = plan_workers(device, workers_per_gpu=workers, max_gpus=1)
    gpu = plan.gpus[0] if plan.gpus else None
    cpu0, t0 = _cpu_seconds(), time.monotonic()
    with GpuSampler(gpu) as sampler:
        outcome = run_batch(f"bench-w{workers}", items, store, store, "processed/", config, plan,
                            root / f"work-{workers}", probes=probes, settings=settings)
    wall = time.monotonic() - t0
    cpu_s = _cpu_seconds() - cpu0
    audio_h = outcome.processed_hours
    stage_s = {k: round(v, 2) for k, v in outcome.stage_seconds.items()}
    gpus = max(1, len(plan.gpus))
    # Steady state: from the first episode handed to a worker to the last one uploaded (workers start and load
    # their models before that, once per batch; `wall_s` includes it).
    marks = [t for t in outcome.timeline.values() if "sent" in t and "uploaded" in t]
    busy = (max(t["uploaded"] for t in marks) - min(t["sent"] for t in marks)) if marks else wall
    return {
        "workers": workers,
        "plan": plan.describe(),
        "episodes": {"done": outcome.count("done"), "failed": outcome.count("failed")},
        "errors": [e for e in outcome.status["error"].to_list() if e][:5],
        "audio_hours": round(audio_h, 4),
        "wall_s": round(wall, 2),
        "processing_s": round(busy, 2),
        "pipe_audio_h_per_gpu_h": round(audio_h / (busy / 3600) / gpus, 1) if busy > 0 else None,
        "pipe_audio_h_per_gpu_h_with_startup": round(audio_h / (wall / 3600) / gpus, 1) if wall > 0 else None,
        "stage_seconds": stage_s,
        "stage_audio_h_per_busy_h": {k: round(audio_h / (v / 3600), 1) for k, v in stage_s.items() if v > 0},
        "cpu_cores_used": round(cpu_s / wall, 2) if wall > 0 else None,
        **sampler.summary(),
        "stage_devices": outcome.worker_devices,
        "stage_backends": outcome.worker_backends,
        "worker_losses": outcome.worker_losses,
    }


def machine() -> dict:
    import torch

    info = {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import ctranslate2
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
        info["ctranslate2"] = ctranslate2.__version__
        info["ctranslate2_cuda_devices"] = ctranslate2.get_cuda_device_count()
    except Exception as err:  # noqa: BLE001 - recorded, the run decides whether it matters
        info["import_error"] = f"{type(err).__name__}: {err}"
    return info


def model_sizes(models_dir: Path) -> dict:
    sizes_file = models_dir / "model_sizes.json"
    sizes = json.loads(sizes_file.read_text()) if sizes_file.is_file() else {}
    files = {}
    for path in sorted(models_dir.rglob("*")):
        if path.is_file() and path.suffix in (".bin", ".onnx", ".npz") and ".cache" not in path.parts:
            files[str(path.relative_to(models_dir))] = path.stat().st_size
    return {**sizes, "files_bytes": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "models/tiny"), help="folder with models.json")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio per run (per worker count)")
    parser.add_argument("--episode-minutes", type=float, default=0.0,
                        help="length of one episode (default: a sixth of --minutes, at most 20)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to run, comma-separated")
    parser.add_argument("--stages", default="separate,diarize,asr,dnsmos")
    parser.add_argument("--language", default="en", help="forced ASR language (random weights detect none)")
    parser.add_argument("--beam-size", type=int, default=5, help="ASR beam (production: 5)")
    parser.add_argument("--max-new-tokens", type=int, default=48,
                        help="tokens decoded per segment: random weights never end a transcript on their own; 48 is "
                             "about 15 s of English speech (0 = no cap)")
    parser.add_argument("--no-overlap", action="store_true", help="workers run one episode start to end")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from emilia_pipe.models import ModelSet
    from emilia_pipe.runner import RunnerSettings
    from emilia_pipe.settings import build_pipe_config

    models_dir = Path(args.models)
    models = ModelSet.load(models_dir)
    stages = [s for s in args.stages.split(",") if s]
    pipe_device = "cpu" if args.device == "cpu" else "cuda"  # inside a worker its one GPU is always cuda:0
    config = build_pipe_config(models, stages=stages, device=pipe_device, asr_language=args.language or None,
                               asr_beam_size=args.beam_size, asr_max_new_tokens=args.max_new_tokens or None)
    settings = RunnerSettings(progress_interval_s=3600, overlap=not args.no_overlap)
    episode_minutes = args.episode_minutes or min(20.0, max(args.minutes / 6, 0.25))
    report = {"benchmark": "gpu_throughput", "machine": machine(), "device_setting": args.device,
              "models": {"dir": str(models_dir), "kind": models.kind, "sizes": model_sizes(models_dir)},
              "stages": stages, "asr_beam_size": args.beam_size, "asr_max_new_tokens": args.max_new_tokens or None,
              "overlap": not args.no_overlap,
              "reference": {"emilia_audio_h_per_gpu_h": EMILIA_AUDIO_H_PER_GPU_H,
                            "target_audio_h_per_gpu_h": TARGET_AUDIO_H_PER_GPU_H},
              "runs": []}
    out = Path(args.out or ROOT / f"benchmarks/results/gpu_throughput_{args.device.split(':')[0]}_{models.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emilia-bench-") as tmp:
        t0 = time.monotonic()
        episodes = make_episodes(args.minutes, episode_minutes, Path(tmp) / "episodes")
        report["audio"] = {"episodes": len(episodes), "episode_minutes": round(episode_minutes, 2),
                           "minutes_per_run": args.minutes, "made_in_s": round(time.monotonic() - t0, 1)}
        for workers in (int(w) for w in args.workers.split(",") if w.strip()):
            print(f"== {workers} worker(s), {args.minutes} min of audio, device {args.device}", flush=True)
            run = run_one(workers, args.device, episodes, config, Path(tmp), args.language, settings)
            report["runs"].append(run)
            out.write_text(json.dumps(report, indent=1, default=str))  # after each run: a timeout keeps the rest
            print(json.dumps({k: run[k] for k in ("workers", "wall_s", "processing_s", "pipe_audio_h_per_gpu_h",
                                                  "cpu_cores_used",
                                                  "gpu_util_mean_pct", "gpu_mem_peak_gib", "episodes")}),
                  flush=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"{'workers':>7} {'audio h/GPU h':>13} {'cores':>6} {'GPU %':>6} {'peak GiB':>8}  stage audio h per busy h")
    for run in report["runs"]:
        stages_text = ", ".join(f"{k} {v}" for k, v in run["stage_audio_h_per_busy_h"].items())
        print(f"{run['workers']:>7} {run['pipe_audio_h_per_gpu_h']!s:>13} {run['cpu_cores_used']!s:>6} "
              f"{run['gpu_util_mean_pct']!s:>6} {run['gpu_mem_peak_gib']!s:>8}  {stages_text}")
    print(f"wrote {out}")
    return 0 if all(r["episodes"]["failed"] == 0 for r in report["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
