#!/usr/bin/env bash
# One-shot GPU check of benchmarks/pipe_stages.py on a lent device machine (no network there).
#
# Needs a git-ignored `.whl/` folder carried beside the tree: the wheels the device image lacks (PyAV, soxr,
# soundfile + cffi, lameenc, silero-vad, pyannote.audio and the deps it imports, torchcodec 0.11 for torch 2.11) and
# `.whl/dnsmos/*.onnx` (the real DNSMOS). ctranslate2 / faster-whisper do not fit: import-only stand-ins (below).
# Builds tiny pyannote + MDX models (no Whisper: ASR is not benchmarked), then runs the separate, diarize and
# dnsmos stages on CUDA and, as a same-machine baseline, on CPU. Results go to $OUT (or benchmarks/out).
#
#     bash benchmarks/gpu_check.sh    # env: GPU_MINUTES (10), CPU_MINUTES (2), SKIP_CPU=1, DEADLINE_S (280),
#                                     #      GPU_TIMEOUT_S (210), GPU_DEVICE (cuda), PYTHON, SITE, WHL, MODELS, OUT
#
# Note: the device image's onnxruntime is CPU-only, so `separate` (MDX, ONNX) and `dnsmos` fall back to the CPU
# there even with --device cuda; only `diarize` (pyannote, torch) runs on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
MODELS=${MODELS:-/tmp/emilia-tiny-models}
export PYTHONUNBUFFERED=1 PYANNOTE_METRICS_ENABLED=false HF_HUB_OFFLINE=1
t_start=$(date +%s)

WHL=${WHL:-.whl}
echo "== install wheels from $WHL -> $SITE"
if ls "$WHL"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH="$SITE:$PWD"

# emilia_pipe.pipeline imports emilia_pipe.asr, which imports ctranslate2 and faster_whisper at module level. The
# ctranslate2 wheel (43 MB) does not fit the device's 64 MiB transfer limit beside PyAV, and ASR is not benchmarked
# here, so when they are missing, stand-ins that only satisfy the import (and raise if used) go after $SITE.
if ! "$PY" -c "import ctranslate2, faster_whisper" 2>/dev/null; then
  STUBS=${STUBS:-/tmp/emilia-asr-stubs}
  mkdir -p "$STUBS/ctranslate2" "$STUBS/faster_whisper"
  cat > "$STUBS/ctranslate2/__init__.py" <<'PYEOF'
"""Import-only stand-in written by benchmarks/gpu_check.sh (ASR is not benchmarked there)."""
__version__ = "stub"


def get_cuda_device_count() -> int:
    return 0


class StorageView:
    @staticmethod
    def from_array(array):
        raise RuntimeError("ctranslate2 stand-in: ASR is not available in this check")
PYEOF
  cat > "$STUBS/faster_whisper/__init__.py" <<'PYEOF'
"""Import-only stand-in written by benchmarks/gpu_check.sh (ASR is not benchmarked there)."""
__version__ = "stub"


class WhisperModel:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("faster-whisper stand-in: ASR is not available in this check")


class BatchedInferencePipeline(WhisperModel):
    pass
PYEOF
  cat > "$STUBS/faster_whisper/audio.py" <<'PYEOF'
def pad_or_trim(*args, **kwargs):
    raise RuntimeError("faster-whisper stand-in: ASR is not available in this check")
PYEOF
  export PYTHONPATH="$PYTHONPATH:$STUBS"
  echo "ctranslate2 / faster_whisper missing: import-only stand-ins in $STUBS (the asr stage cannot run)"
fi

echo "== versions"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" - <<'EOF' || exit 1
import importlib, platform, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda available", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for name in ["torchaudio", "numpy", "onnxruntime", "av", "soxr", "soundfile", "lameenc", "silero_vad", "torchcodec",
             "pyannote.audio", "ctranslate2", "faster_whisper", "lightning"]:
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # report and go on: the benchmark shows whether it matters
        print(f"  {name} IMPORT FAILED: {type(e).__name__}: {e}")
import onnxruntime as ort
print("  onnxruntime providers", ort.get_available_providers())
EOF

echo "== build tiny models (pyannote + MDX, real DNSMOS, no Whisper) -> $MODELS"
"$PY" - "$MODELS" <<'EOF' || { echo "model build failed"; exit 1; }
import shutil, sys, time
from pathlib import Path

from emilia_pipe.models import DNSMOS_FILES, ModelSet
from emilia_pipe.tiny import mdx, pyannote

t0 = time.perf_counter()
d = Path(sys.argv[1])
d.mkdir(parents=True, exist_ok=True)
diarization = pyannote.build(d / "diarization")
separation = mdx.build(d / "separation" / "tiny_mdx.onnx")
(d / "dnsmos").mkdir(exist_ok=True)
src = Path(".whl/dnsmos")
sig, p808 = (Path(shutil.copyfile(src / n, d / "dnsmos" / n)) for n in DNSMOS_FILES)
ModelSet(whisper="none", diarization=str(diarization), separation=str(separation),
         dnsmos_sig_bak_ovr=str(sig), dnsmos_p808=str(p808), kind="tiny").save(d)
print(f"models in {d} ({time.perf_counter() - t0:.1f} s)")
EOF

STAGES=${STAGES:-separate,diarize,dnsmos}
rc=0
echo "== GPU: ${GPU_MINUTES:-10} min of audio, stages $STAGES"
if timeout "${GPU_TIMEOUT_S:-210}" "$PY" benchmarks/pipe_stages.py --models "$MODELS" --minutes "${GPU_MINUTES:-10}" \
    --device "${GPU_DEVICE:-cuda}" --stages "$STAGES" --language en --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"; then
  cat "$OUT/gpu.json"; echo
else
  echo "GPU run failed"; rc=1
fi
echo "(elapsed $(( $(date +%s) - t_start )) s)"

# The whole script is meant to end by DEADLINE_S (device time is scarce): the CPU baseline gets what is left.
left=$(( ${DEADLINE_S:-280} - ($(date +%s) - t_start) ))
if [ "${SKIP_CPU:-0}" = 1 ] || [ "$left" -lt 45 ]; then
  echo "== CPU baseline skipped (SKIP_CPU=${SKIP_CPU:-0}, $left s left of DEADLINE_S=${DEADLINE_S:-280})"
else
  echo "== CPU baseline: ${CPU_MINUTES:-2} min of audio, stages $STAGES (timeout $left s)"
  if timeout "$left" "$PY" benchmarks/pipe_stages.py --models "$MODELS" --minutes "${CPU_MINUTES:-2}" --device cpu \
      --stages "$STAGES" --language en --out "$OUT/cpu.json" 2>&1 | tee "$OUT/cpu.log"; then
    cat "$OUT/cpu.json"; echo
  else
    echo "CPU run failed"; rc=1
  fi
fi
echo "== done in $(( $(date +%s) - t_start )) s, rc $rc"
exit $rc
