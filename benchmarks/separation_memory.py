"""Does separation memory stay flat as episodes get longer? Peak RSS and time for 5, 20 and 60 minutes of audio.

Each size runs in a fresh subprocess, so one run's allocator high-water mark cannot hide another's. Inside it the
separator is built and warmed up on one second of audio, the synthetic episode (24 kHz mono float32, what the
pipeline hands over) is generated, and only then is the peak reset (Linux `/proc/self/clear_refs`, falling back to
`getrusage` when that is not writable), so the reported increase is what `vocals()` itself adds. That increase
necessarily includes the returned array (4 bytes per input sample); the column "beyond output" subtracts it and is
the number that must not grow with the episode. The absolute peak RSS is reported too: it holds the batch-sized
working set (ORT's arena, STFT buffers) reached during the warm-up on one chunk. Ratios are against the first
(5-minute) run of the same invocation.

    .venv/bin/python benchmarks/separation_memory.py [--minutes 5 20 60] [--chunk-s 30] [--model PATH]

Uses the random-weight stand-in (`emilia_pipe.tiny.mdx`) unless `--model` names a real MDX file; with the stand-in
the seconds are mostly STFT/ISTFT and glue, so they say little about production speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "separation_memory.json"
SAMPLE_RATE = 24_000


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu_seconds() -> float:
    """User + system time of all this process's threads: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _synthetic(minutes: float, sample_rate: int) -> np.ndarray:
    """Noise plus a gliding tone and a pulsing chord, written block by block so no float64 copy of the episode
    inflates the baseline."""
    n = int(minutes * 60 * sample_rate)
    x = np.empty(n, dtype=np.float32)
    rng = np.random.default_rng(0)
    block = 60 * sample_rate
    for start in range(0, n, block):
        t = np.arange(start, min(start + block, n)) / sample_rate
        y = 0.03 * rng.standard_normal(t.size)
        y += 0.1 * np.sin(2 * np.pi * (220 * t + 30 * np.sin(2 * np.pi * t / 11)))
        y += 0.05 * (np.sin(2 * np.pi * 330 * t) + np.sin(2 * np.pi * 415 * t)) * (np.sin(2 * np.pi * t / 3) > 0)
        x[start : start + t.size] = y
    return x


def worker(model: str, minutes: float, chunk_s: float, batch_windows: int, device: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from emilia_pipe.separation import MdxSeparator, SeparationConfig

    separator = MdxSeparator(SeparationConfig(model, chunk_s=chunk_s, batch_windows=batch_windows, device=device))
    # Warm up on one full chunk: ORT's arena, torch's FFT plans and the allocator reach their batch-sized working
    # set here, which any episode needs; what the measured run adds on top is what could grow with length.
    separator.vocals(_synthetic(chunk_s / 60, SAMPLE_RATE), SAMPLE_RATE)
    audio = _synthetic(minutes, SAMPLE_RATE)
    reset = _reset_peak()
    base_kib = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    vocals = separator.vocals(audio, SAMPLE_RATE)
    seconds, cpu_seconds = time.perf_counter() - t0, _cpu_seconds() - cpu0
    peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert vocals.shape == audio.shape and vocals.dtype == np.float32
    increase = (peak_kib - base_kib) * 1024
    return {
        "minutes": minutes,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "realtime_factor": round(minutes * 60 / seconds, 1),
        "baseline_rss_mib": round(base_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_increase_mib": round(increase / 2**20, 1),
        "output_mib": round(vocals.nbytes / 2**20, 1),
        "beyond_output_mib": round((increase - vocals.nbytes) / 2**20, 1),
        "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss",
        "provider": separator.provider,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0, 60.0])
    parser.add_argument("--chunk-s", type=float, default=30.0)
    parser.add_argument("--batch-windows", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="an MDX .onnx; default: build the tiny stand-in")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker(args.model, args.minutes[0], args.chunk_s, args.batch_windows, args.device)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT))
            from emilia_pipe.tiny import mdx

            model = str(mdx.build(Path(tmp) / "tiny_mdx.onnx"))
        rows = []
        for minutes in args.minutes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model,
                   "--minutes", str(minutes), "--chunk-s", str(args.chunk_s),
                   "--batch-windows", str(args.batch_windows), "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"{minutes} min run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))

    base = rows[0]
    for row in rows:
        row["time_ratio"] = round(row["seconds"] / base["seconds"], 2)
        row["cpu_time_ratio"] = round(row["cpu_seconds"] / base["cpu_seconds"], 2)
        row["peak_ratio"] = round(row["peak_increase_mib"] / max(base["peak_increase_mib"], 1e-9), 2)
        row["beyond_output_ratio"] = round(row["beyond_output_mib"] / max(base["beyond_output_mib"], 1e-9), 2)
        row["length_ratio"] = round(row["minutes"] / base["minutes"], 2)

    header = ("min", "seconds", "cpu s", "x real", "peak MiB", "peak +MiB", "output MiB", "beyond MiB", "len ×",
              "time ×", "cpu ×", "peak ×", "beyond ×")
    print(" ".join(f"{h:>9}" for h in header))
    for r in rows:
        cells = (r["minutes"], r["seconds"], r["cpu_seconds"], r["realtime_factor"], r["peak_rss_mib"],
                 r["peak_increase_mib"], r["output_mib"], r["beyond_output_mib"], r["length_ratio"], r["time_ratio"],
                 r["cpu_time_ratio"], r["peak_ratio"], r["beyond_output_ratio"])
        print(" ".join(f"{c:>9}" for c in cells))

    report = {
        "config": {"chunk_s": args.chunk_s, "batch_windows": args.batch_windows, "device": args.device,
                   "model": args.model or "tiny stand-in (emilia_pipe.tiny.mdx)", "sample_rate": SAMPLE_RATE},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
