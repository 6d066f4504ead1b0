"""What loading the code location costs a code server, sensor tick or UI reload: seconds and peak memory.

    .venv/bin/python benchmarks/code_location_load.py [--repeat 3] [--out benchmarks/out/code_location_load.json]

Three cases, each in a fresh interpreter (`--repeat` times, medians reported), so no case inherits another's imports:

- `definitions`: import `emilia_assets.definitions`, build `defs()` and resolve every job, sensor and schedule (what
  a code server does before it can answer the daemon or the UI);
- `ml_stack` (the baseline): import torch, faster_whisper, ctranslate2 and onnxruntime, as loading the definitions
  did before the pipe imported them lazily;
- `definitions_with_ml_stack`: the ML stack and then the definitions, i.e. what one load used to cost.

Each child prints its own peak RSS (`VmHWM`, falling back to `ru_maxrss`) and the seconds its imports took; the
parent adds the process's wall time, interpreter start included. Ratios are against the `ml_stack` baseline measured
in the same invocation, so machines of different speed compare by their ratios. The `heavy` column lists which ML
modules each case left loaded: `definitions` must list none (tests/unit/test_definitions_light.py holds that line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "code_location_load.json"
HEAVY = ("torch", "torchaudio", "faster_whisper", "ctranslate2", "onnxruntime", "pyannote", "transformers",
         "silero_vad", "lightning", "matplotlib")
ML_STACK = "import torch, faster_whisper, ctranslate2, onnxruntime"
DEFINITIONS = (
    "import emilia_assets.definitions as d\n"
    "repo = d.defs().get_repository_def()\n"
    "repo.get_all_jobs(); repo.sensor_defs; repo.schedule_defs\n"
)
CASES = {
    "ml_stack": ML_STACK,
    "definitions": DEFINITIONS,
    "definitions_with_ml_stack": ML_STACK + "\n" + DEFINITIONS,
}
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
exec(compile({code!r}, "<case>", "exec"))
seconds = time.perf_counter() - t0
peak_kib = None
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            peak_kib = int(line.split()[1])
except OSError:
    pass
if peak_kib is None:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
result = {{"import_s": seconds, "peak_kib": peak_kib, "heavy": heavy, "modules": len(sys.modules)}}
print("RESULT " + json.dumps(result))
"""


def run_case(name: str, code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("R2_BUCKET", "EMILIA_STAGES")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD.format(code=code, heavy=HEAVY)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"case {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_s"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per case; medians are reported")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    samples: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(args.repeat):  # interleaved, so a burst of load on a shared machine hits every case alike
        for name, code in CASES.items():
            samples[name].append(run_case(name, code))

    rows = []
    for name, runs in samples.items():
        rows.append({
            "case": name,
            "import_s": round(statistics.median(r["import_s"] for r in runs), 2),
            "process_s": round(statistics.median(r["process_s"] for r in runs), 2),
            "peak_rss_mib": round(statistics.median(r["peak_kib"] for r in runs) / 1024, 1),
            "modules": runs[-1]["modules"],
            "heavy": runs[-1]["heavy"],
            "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
        })
    base = next(r for r in rows if r["case"] == "ml_stack")
    for row in rows:
        row["import_ratio"] = round(row["import_s"] / base["import_s"], 2)
        row["process_ratio"] = round(row["process_s"] / base["process_s"], 2)
        row["peak_ratio"] = round(row["peak_rss_mib"] / base["peak_rss_mib"], 2)

    header = ("case", "import s", "process s", "peak MiB", "import ×", "process ×", "peak ×", "heavy modules")
    print(f"{header[0]:<27}" + " ".join(f"{h:>10}" for h in header[1:-1]) + "  " + header[-1])
    for r in rows:
        cells = (r["import_s"], r["process_s"], r["peak_rss_mib"], r["import_ratio"], r["process_ratio"],
                 r["peak_ratio"])
        print(f"{r['case']:<27}" + " ".join(f"{c:>10}" for c in cells) + "  " + (",".join(r["heavy"]) or "-"))

    report = {
        "config": {"repeat": args.repeat, "baseline": "ml_stack", "cases": CASES},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
