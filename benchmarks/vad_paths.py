"""Silero VAD's two CPU paths side by side: the stock streaming model (TorchScript, one call per 32 ms frame, what
the pipe ran before) and the wheel's batched sequence ONNX front end (what `emilia_pipe.vad` runs now).

    python benchmarks/vad_paths.py [--minutes 3] [--repeat 3] [--out FILE]

For each path, on one torch / ONNX Runtime thread, medians of the repeats: speed (audio seconds per wall second)
alone, and beside a busy pure-Python thread, as a worker's overlap threads (decode, MP3 export, upload) are
beside its model stages; the rate of that Python thread, as a fraction of its rate alone; and the spans found
(they must be the same). A path that needs the GIL for every 32 ms frame waits for it once per frame while
another thread holds it. Baseline: the streaming path, in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def count_while(fn) -> tuple[float, int]:
    """Run `fn` while a Python thread counts; returns fn's seconds and the count."""
    stop = threading.Event()
    count = 0

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            for _ in range(1000):
                count += 1

    thread = threading.Thread(target=counter)
    thread.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    return seconds, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="audio per repeat (the samples, looped)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/vad_paths.json"))
    args = parser.parse_args(argv)

    import torch

    from emilia_pipe.audio import TARGET_SR, decode, resample
    from emilia_pipe.vad import VAD_SR, SileroVad

    torch.set_num_threads(1)  # both paths on one thread (the sequence path's ONNX session has one of its own)
    vad = SileroVad()
    from silero_vad import get_speech_timestamps, load_silero_vad

    stock = load_silero_vad()
    speech = np.concatenate([decode(ROOT / f"samples/{s}.mp3", TARGET_SR) for s in ("monologue", "two_voices")])
    audio = np.resize(speech, int(args.minutes * 60 * TARGET_SR)).astype(np.float32)
    audio_s = audio.size / TARGET_SR
    wav = np.ascontiguousarray(resample(audio, TARGET_SR, VAD_SR), dtype=np.float32)

    def streaming() -> list[tuple[float, float]]:
        with torch.inference_mode():
            stamps = get_speech_timestamps(torch.from_numpy(wav), stock, sampling_rate=VAD_SR)
        return [(s["start"] / VAD_SR, s["end"] / VAD_SR) for s in stamps]

    paths = {"streaming torchscript (before)": streaming,
             "sequence onnx (now)": lambda: vad.speech_spans(audio, TARGET_SR)}
    # The counter alone, for the GIL fraction; the sequence path includes the 24 -> 16 kHz resample, as in the pipe.
    _, alone = count_while(lambda: time.sleep(1.0))
    report: dict = {"benchmark": "vad_paths", "audio_s": round(audio_s, 1), "threads": 1,
                    "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]},
                    "counter_per_s_alone": alone, "paths": {}}
    spans = {}
    for name, fn in paths.items():
        spans[name] = fn()  # warm-up, and the spans compared below
        alone_speed, beside_speed, gil = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            alone_speed.append(audio_s / (time.perf_counter() - t0))
            seconds, count = count_while(fn)
            beside_speed.append(audio_s / seconds)
            gil.append(count / seconds / alone)
        report["paths"][name] = {
            "audio_s_per_s_alone": round(statistics.median(alone_speed), 1),
            "audio_s_per_s_beside_python_thread": round(statistics.median(beside_speed), 1),
            "python_thread_rate_fraction": round(statistics.median(gil), 3),
            "repeats": {"alone": [round(x, 1) for x in alone_speed], "beside": [round(x, 1) for x in beside_speed]},
            "spans": len(spans[name]),
        }
        print(name, report["paths"][name], flush=True)
    before, now = (report["paths"][n] for n in paths)
    report["speedup_alone"] = round(now["audio_s_per_s_alone"] / before["audio_s_per_s_alone"], 2)
    report["speedup_beside_python_thread"] = round(now["audio_s_per_s_beside_python_thread"]
                                                   / before["audio_s_per_s_beside_python_thread"], 2)
    report["same_spans"] = len({tuple(s) for s in spans.values()}) == 1
    print({k: report[k] for k in ("speedup_alone", "speedup_beside_python_thread", "same_spans")}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0 if report["same_spans"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
