"""Seconds per stage per hour of audio for the whole Emilia pipe, on this machine (CPU or GPU).

    python benchmarks/pipe_stages.py --models models/tiny --minutes 10 [--device cuda] [--stages separate,diarize,...]

Builds one pipeline (models load once, as a worker does), runs it on a synthetic episode made by concatenating the
bundled samples, and reports each stage's seconds per hour of audio. Speed is also given as a ratio against a
baseline measured in the same process: decoding the same episode (the one stage every configuration runs), so runs
on different machines can be compared by their ratios. Each stage's device is read back from the loaded runtime
(`stage_devices`), never taken from `--device`. Writes JSON to benchmarks/out/pipe_stages.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent


def make_episode(minutes: float, path: Path) -> float:
    from emilia_pipe.audio import TARGET_SR, decode

    parts = [decode(p, TARGET_SR) for p in sorted((ROOT / "samples").glob("*.mp3"))]
    unit = np.concatenate(parts)
    n = int(minutes * 60 * TARGET_SR)
    audio = np.tile(unit, int(np.ceil(n / unit.size)))[:n]
    sf.write(path, audio, TARGET_SR, subtype="PCM_16")
    return n / TARGET_SR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "models/tiny"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stages", default="separate,diarize,asr,dnsmos")
    parser.add_argument("--language", default="en", help="forced ASR language (tiny models cannot detect one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/pipe_stages.json"))
    args = parser.parse_args()

    from emilia_pipe.audio import decode
    from emilia_pipe.models import ModelSet
    from emilia_pipe.pipeline import EmiliaPipeline
    from emilia_pipe.settings import build_pipe_config

    stages = [s for s in args.stages.split(",") if s]
    config = build_pipe_config(ModelSet.load(args.models), stages=stages, device=args.device,
                               asr_language=args.language or None, asr_beam_size=1)
    t0 = time.perf_counter()
    pipeline = EmiliaPipeline(config)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "episode.wav"
        seconds = make_episode(args.minutes, wav)
        hours = seconds / 3600
        t0 = time.perf_counter()
        decode(wav)
        baseline = (time.perf_counter() - t0) / hours
        warm = Path(tmp) / "warm.wav"
        make_episode(0.5, warm)
        pipeline.process(warm, "warmup", Path(tmp) / "warm-out", language_hint="en")  # kernels, caches, allocators
        t0 = time.perf_counter()
        result = pipeline.process(wav, "bench", Path(tmp) / "out", language_hint="en")
        total = time.perf_counter() - t0
    per_hour = {k: round(v / hours, 2) for k, v in result.stage_seconds.items()}
    # Read back from the loaded runtimes: a CUDA setting is not proof that a stage ran on the GPU.
    stage_devices = {"standardize": "cpu", **pipeline.runtime_devices(), "export": "cpu"}
    report = {
        "machine": platform.node(),
        "device_setting": args.device,
        "stage_devices": {k: stage_devices[k] for k in per_hour if k in stage_devices},
        "stage_backends": pipeline.runtime_backends(),
        "models": ModelSet.load(args.models).kind,
        "audio_minutes": args.minutes,
        "segments": len(result.segments),
        "model_load_s": round(load_s, 2),
        "baseline_decode_s_per_audio_hour": round(baseline, 2),
        "stage_s_per_audio_hour": per_hour,
        "stage_vs_decode_baseline": {k: round(v / baseline, 1) for k, v in per_hour.items()},
        "total_s_per_audio_hour": round(total / hours, 1),
        "real_time_factor": round(total / seconds, 4),
    }
    try:
        import torch

        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
            report["gpu_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"{'stage':<12} {'s / audio h':>12} {'x decode':>9}  ran on")
    for k, v in per_hour.items():
        print(f"{k:<12} {v:>12.1f} {report['stage_vs_decode_baseline'][k]:>9.1f}  {stage_devices.get(k, '?')}")
    print(f"total {report['total_s_per_audio_hour']} s per audio hour (RTF {report['real_time_factor']}), "
          f"{report['segments']} segments, models loaded in {report['model_load_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
