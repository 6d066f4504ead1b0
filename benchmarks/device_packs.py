"""Build `.whl/`: what the GPU test machine lacks, packed small enough to travel with the code (64 MiB in all).

The machine has Python 3.12, torch 2.11 (CUDA 13), transformers, onnx, a CPU-only onnxruntime and (as its earlier
runs showed) scipy, pandas and scikit-learn; it has no network. This script:

1. finds the distributions a batch run really imports (runner, worker pool, every stage, pyannote's diarization
   pipeline loaded from the tiny models), in this venv;
2. drops those the machine is assumed to have (`ON_DEVICE`, override with --assume / --need);
3. downloads their cp312 manylinux wheels with pip (the versions pinned here), unpacks them, strips debug symbols
   from shared libraries, drops files nothing loads (silero-vad's other model files, tests), and writes one
   `.whl/<group>.tar.xz` per group: `base` (PyAV, soxr, lameenc, silero-vad, pyannote.audio and its pure-Python
   dependencies), `polars` (the runner's tables), `asr` (ctranslate2, faster-whisper);
4. copies the real DNSMOS files to `.whl/dnsmos/` and Whisper's tokenizer file to `.whl/`;
5. prints each pack's size and whether code + packs fit in 64 MiB.

    python benchmarks/device_packs.py --dnsmos DIR [--groups base,polars,asr] [--assume polars]

`benchmarks/gpu_throughput_device.sh` unpacks whatever `.whl/*.tar.xz` it finds into `.devsite/` (kept between
calls while the machine stays warm), behind the machine's own packages.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20
# On the device image (torch + transformers + onnx + onnxruntime + scipy/pandas/scikit-learn and their dependencies).
ON_DEVICE = {
    "torch", "numpy", "transformers", "tokenizers", "huggingface-hub", "safetensors", "pyyaml", "requests", "tqdm",
    "regex", "packaging", "filelock", "fsspec", "jinja2", "markupsafe", "sympy", "mpmath", "networkx",
    "typing-extensions", "onnx", "onnxruntime", "protobuf", "coloredlogs", "humanfriendly", "flatbuffers", "urllib3",
    "certifi", "idna", "charset-normalizer", "scipy", "pandas", "scikit-learn", "joblib", "threadpoolctl",
    "python-dateutil", "pytz", "tzdata", "six", "setuptools", "pip", "hf-xet", "torchaudio", "triton", "cffi",
    "pycparser", "matplotlib", "pillow", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing",
    # Also in the device image's package list; `.devsite` is appended behind the machine's packages, so a packed
    # copy of these would never be imported (pyannote.audio 4.0.7 accepts the image's versions).
    "lightning", "lightning-utilities", "pytorch-lightning", "torchmetrics", "einops", "rich", "markdown-it-py",
    "mdurl", "pygments", "anyio", "h11", "httpx", "httpcore", "cloudpickle", "sortedcontainers", "attrs", "psutil",
    "grpcio", "tabulate", "click", "typer", "shellingham", "tiktoken",
}
GROUPS = {"asr": {"ctranslate2", "faster-whisper"}, "polars": {"polars", "polars-runtime-32"}}
NEVER = {"emilia-forge", "nvidia-cublas", "nvidia-cudnn-cu13"}  # the project itself; CUDA libraries come with torch
# Imported only when present (checked by importing the closure with each blocked), or by the device's own
# scikit-learn / torch, which bring their versions: pyarrow (polars' optional interop), torchcodec (pyannote decodes
# files with it; we hand it waveforms), cuda-bindings (torch), narwhals (scikit-learn), google-auth (a namespace
# neighbour of protobuf, not imported).
OPTIONAL = {"pyarrow", "torchcodec", "cuda-bindings", "cuda-pathfinder", "importlib-resources", "narwhals",
            "google-auth"}
DROP_SUFFIXES = (".pyi", ".c", ".h", ".cpp", ".pxd", ".pyx")
SILERO_MODEL = "silero_vad_16k_sequence.onnx"  # what `load_silero_vad(sequence=True)` opens

CLOSURE = r"""
import importlib.metadata as md, json, os, sys
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
import emilia_pipe.runner, emilia_pipe.pool, emilia_pipe.pipeline, emilia_pipe.onnx_torch, emilia_pipe.doctor
from emilia_pipe.diarization import DiarizationConfig, PyannoteDiarizer
from emilia_pipe.vad import SileroVad
import lameenc, soxr, av, faster_whisper, ctranslate2, polars
PyannoteDiarizer(DiarizationConfig(model=sys.argv[1], device="cpu"))
SileroVad()
tops = {m.split(".")[0] for m in list(sys.modules)}
owners = md.packages_distributions()
dists = {d for t in tops for d in owners.get(t, [])}
print(json.dumps({d: md.version(d) for d in sorted(dists)}))
"""


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(python: str, tiny_models: Path) -> dict[str, str]:
    out = subprocess.run([python, "-c", CLOSURE, str(tiny_models / "diarization")], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"import closure failed: {out.stderr[-2000:]}")
    return {norm(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def download(dists: dict[str, str], cache: Path, python: str) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for dist, version in dists.items():
        have = [p for p in cache.glob("*.whl") if norm(p.name.split("-")[0]) == dist and f"-{version}-" in p.name]
        if not have:
            subprocess.run([python, "-m", "pip", "download", "-q", "--python-version", "3.12", "--only-binary=:all:",
                            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                            "--no-deps", "-d", str(cache), f"{dist}=={version}"], check=True)
            have = [p for p in cache.glob("*.whl") if norm(p.name.split("-")[0]) == dist and f"-{version}-" in p.name]
        found[dist] = have[0]
    return found


def _keep(name: str) -> bool:
    if name.endswith(DROP_SUFFIXES) or "/tests/" in name or "/test/" in name:
        return False
    if name.startswith("silero_vad/data/"):  # eight model files; emilia_pipe.vad loads one
        return name.endswith((".py", SILERO_MODEL))
    return True


def pack(wheels: list[Path], target: Path) -> int:
    """Unpack the wheels into one tree, strip shared libraries, write target (.tar.xz, preset 9e)."""
    strip = shutil.which("strip")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "site"
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    if info.is_dir() or not _keep(info.filename):
                        continue
                    dest = tree / info.filename
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(info))
                    if info.external_attr >> 16 & 0o111:
                        dest.chmod(0o755)
        if strip:
            for lib in [p for p in tree.rglob("*.so*") if p.is_file()]:
                subprocess.run([strip, "--strip-unneeded", str(lib)], capture_output=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(target, "wb", preset=9 | lzma.PRESET_EXTREME) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            tar.add(tree, arcname="site")
    return target.stat().st_size


def code_bytes() -> int:
    """What the device tool carries besides `.whl/`: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dnsmos", required=True, help="folder with the real sig_bak_ovr.onnx and model_v8.onnx")
    parser.add_argument("--groups", default="base,polars,asr")
    parser.add_argument("--assume", default="", help="more distributions the device has, comma-separated")
    parser.add_argument("--need", default="", help="distributions to pack although listed in ON_DEVICE")
    parser.add_argument("--out", default=str(ROOT / ".whl"))
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "emilia-device-wheels"))
    parser.add_argument("--models", default=str(ROOT / "models/tiny"))
    args = parser.parse_args(argv)

    python = sys.executable
    dists = closure(python, Path(args.models))
    on_device = (ON_DEVICE | {norm(x) for x in args.assume.split(",") if x}) - {norm(x) for x in args.need.split(",")}
    wanted = {d: v for d, v in dists.items()
              if d not in on_device and d not in NEVER and d not in OPTIONAL and not d.startswith("nvidia-")}
    groups: dict[str, dict[str, str]] = {g: {} for g in args.groups.split(",") if g}
    for dist, version in wanted.items():
        group = next((g for g, members in GROUPS.items() if dist in members), "base")
        if group in groups:
            groups[group][dist] = version
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels = download({d: v for members in groups.values() for d, v in members.items()}, Path(args.cache), python)
    sizes = {}
    for group, members in groups.items():
        if members:
            sizes[f"{group}.tar.xz"] = pack([wheels[d] for d in sorted(members)], out / f"{group}.tar.xz")
            print(f"{group}: {', '.join(f'{d}=={v}' for d, v in sorted(members.items()))}", flush=True)
    (out / "dnsmos").mkdir()
    for name in ("sig_bak_ovr.onnx", "model_v8.onnx"):
        shutil.copyfile(Path(args.dnsmos) / name, out / "dnsmos" / name)
    from emilia_pipe.tiny.whisper import fetch_tiktoken

    shutil.copyfile(fetch_tiktoken(), out / "multilingual.tiktoken")
    extra = sum(p.stat().st_size for p in (out / "dnsmos").iterdir()) + (out / "multilingual.tiktoken").stat().st_size
    code = code_bytes()
    total = code + extra + sum(sizes.values())
    report = {"packs_bytes": sizes, "dnsmos_and_tokenizer_bytes": extra, "code_bytes": code, "total_bytes": total,
              "limit_bytes": LIMIT, "fits": total <= LIMIT}
    (out / "packs.json").write_text(json.dumps({**report, "groups": groups}, indent=1))
    for name, size in sizes.items():
        print(f"{name:<16} {size / 2**20:6.1f} MiB")
    print(f"code {code / 2**20:.1f} MiB + DNSMOS/tokenizer {extra / 2**20:.1f} MiB -> total {total / 2**20:.1f} MiB "
          f"of {LIMIT / 2**20:.0f} MiB: {'fits' if total <= LIMIT else 'TOO LARGE: split over two calls (README)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
