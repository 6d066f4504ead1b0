#!/usr/bin/env bash
# The GPU throughput measurement, as one command on the lent H200 (no network there): see benchmarks/README.md.
#
#   bash benchmarks/gpu_throughput_device.sh          # everything below; results in $OUT (the device tool's)
#   UNPACK_ONLY=1 bash benchmarks/gpu_throughput_device.sh   # only step 1 (first call when the packs need two)
#   bash benchmarks/gpu_throughput_device.sh --device cpu --minutes 1 --workers 1   # the CPU path (tiny models)
#
# 1. unpacks `.whl/*.tar.xz` (benchmarks/device_packs.py) into `.devsite/` (git-ignored, so it stays on the
#    machine between calls while it is warm), behind the machine's own packages (a sitecustomize appends it);
# 2. records what the machine has (environment.json: Python packages, GPU, compilers);
# 3. ASR: builds the libcublas.so.12 -> cuBLAS 13 shim (benchmarks/cublas_shim.py) and checks that CTranslate2 sees
#    the GPU and runs a small Whisper on it in float16; if not, ASR is left out and the log says why;
# 4. builds the production-size random models (`emilia-forge models tiny --full-size`; Whisper large-v3 drawn on
#    the GPU) with the real DNSMOS from .whl/dnsmos;
# 5. `emilia-forge doctor --load` on cuda: each stage's device and execution path, read back;
# 6. benchmarks/onnx_paths.py: separation and DNSMOS through ONNX Runtime (CPU, the reference) and torch float32 /
#    float16 on the GPU at production size: agreement and speed;
# 7. benchmarks/gpu_throughput.py: the whole pipe with 1, 2 and 3 workers on the GPU, MINUTES of audio each.
# Each step is bounded so the whole ends by DEADLINE_S; what finished is in $OUT either way.
#
# On the CPU (--device cpu) it builds the tiny models instead of the full-size ones and skips steps 3 and 6.
#
# flags / env: --device DEVICE (cuda) --minutes MINUTES (20) --workers WORKERS (1,2,3); DEADLINE_S (540)
#   ASR (auto|off) PYTHON (python3) OUT (benchmarks/out) DNSMOS_DIR (.whl/dnsmos) TIKTOKEN (.whl/multilingual.tiktoken)
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-20}
WORKERS=${WORKERS:-1,2,3}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEV=$PWD/.devsite
DNSMOS_DIR=${DNSMOS_DIR:-.whl/dnsmos}
TIKTOKEN=${TIKTOKEN:-.whl/multilingual.tiktoken}
if [ "$DEVICE" = cpu ]; then MODELS=${MODELS:-/tmp/emilia-tiny-models}; else MODELS=${MODELS:-/tmp/emilia-full-models}; fi
DEADLINE_S=${DEADLINE_S:-540}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( DEADLINE_S - ($(date +%s) - t0) )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/device.log"; }
export PYTHONUNBUFFERED=1 PYANNOTE_METRICS_ENABLED=false HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 1. packs
mkdir -p "$DEV"
for pack in .whl/*.tar.xz; do
  [ -e "$pack" ] || continue
  log "unpack $pack ($(du -h "$pack" | cut -f1))"
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$pack" "$DEV" \
    || { log "unpack failed: $pack"; exit 1; }
done
mkdir -p "$DEV/boot"
printf 'import site\nsite.addsitedir(%s)\n' "'$DEV/site'" > "$DEV/boot/sitecustomize.py"
export PYTHONPATH="$DEV/boot:$PWD"
if [ "${UNPACK_ONLY:-0}" = 1 ]; then log "unpacked; stopping (UNPACK_ONLY=1)"; exit 0; fi

# 2. what is here
"$PY" - > "$OUT/environment.json" 2>>"$OUT/device.log" <<'EOF'
import importlib, json, platform, shutil, subprocess
out = {"python": platform.python_version(), "gcc": shutil.which("gcc"), "modules": {}}
for name in ["torch", "torchaudio", "numpy", "scipy", "pandas", "sklearn", "onnx", "onnxruntime", "transformers",
             "av", "soxr", "lameenc", "silero_vad", "pyannote.audio", "polars", "ctranslate2", "faster_whisper",
             "lightning", "optuna", "torchcodec", "pynvml"]:
    try:
        mod = importlib.import_module(name)
        out["modules"][name] = getattr(mod, "__version__", "?")
    except Exception as err:
        out["modules"][name] = f"MISSING: {type(err).__name__}: {err}"[:200]
import torch
out["torch_cuda"] = torch.version.cuda
out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
try:
    out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    out["nvidia_smi"] = None
print(json.dumps(out, indent=1))
EOF
cat "$OUT/environment.json"

# 3. ASR through the cuBLAS shim
ASR=${ASR:-auto}
[ "$DEVICE" = cpu ] && [ "$ASR" = auto ] && ASR=on  # CTranslate2's CPU path needs no cuBLAS
if [ "$ASR" = auto ]; then
  ASR=off
  if "$PY" -c "import ctranslate2, faster_whisper" 2>>"$OUT/device.log"; then
    if "$PY" benchmarks/cublas_shim.py build "$DEV/shim" 2>&1 | tee -a "$OUT/device.log"; then
      export LD_LIBRARY_PATH="$DEV/shim:${LD_LIBRARY_PATH:-}"
      if TIKTOKEN=$TIKTOKEN timeout 120 "$PY" - 2>&1 <<'EOF' | tee -a "$OUT/device.log"; then ASR=on; fi
import sys, tempfile
from pathlib import Path
import ctranslate2
n = ctranslate2.get_cuda_device_count()
print("ctranslate2 CUDA devices:", n, "compute types:", ctranslate2.get_supported_compute_types("cuda") if n else None)
if n == 0:
    sys.exit(1)
from emilia_pipe.asr import AsrConfig, WhisperAsr
from emilia_pipe.audio import decode
from emilia_pipe.tiny import whisper
import os
out = whisper.build(Path(tempfile.mkdtemp()) / "w", Path(os.environ["TIKTOKEN"]))
asr = WhisperAsr(AsrConfig(model=str(out), device="cuda", language="en", beam_size=1, temperature=0.0,
                           max_new_tokens=16))
x = decode("samples/monologue.mp3", 16000)[: 16000 * 8]
result = asr.transcribe(x, 16000, [(0.0, 4.0), (4.0, 8.0)])
print("ASR on cuda through the shim:", asr.compute_type, [r.keep for r in result], str(asr.model.model.device))
EOF
    fi
  else
    log "no ctranslate2/faster-whisper here: the asr pack was not unpacked on this machine (the first call's machine goes back 30 s after it returns; make the second call at once)"
  fi
  log "ASR: $ASR"
fi
STAGES=separate,diarize,dnsmos
[ "$ASR" = on ] && STAGES=separate,diarize,asr,dnsmos

# 4. production-size models (tiny ones on the CPU)
log "building models in $MODELS"
mkdir -p "$MODELS/.cache"
[ -f "$TIKTOKEN" ] && cp "$TIKTOKEN" "$MODELS/.cache/"
if [ "$DEVICE" = cpu ]; then
  build=("$PY" -m emilia_pipe models tiny "$MODELS" --dnsmos "$DNSMOS_DIR")
else
  build=("$PY" -m emilia_pipe models tiny "$MODELS" --full-size --dnsmos "$DNSMOS_DIR" --init-device cuda
         --tiktoken "$TIKTOKEN")
  [ "$ASR" = on ] || build+=(--no-whisper)
fi
if ! timeout $(( $(left) - 60 )) "${build[@]}" 2>&1 | tee -a "$OUT/device.log"; then
  log "model build failed"; exit 1
fi
cp "$MODELS/model_sizes.json" "$OUT/" 2>/dev/null
log "models built"

# 5. where each stage runs, read back
timeout 180 "$PY" -m emilia_pipe doctor --models "$MODELS" --device "$DEVICE" --stages "$STAGES" --load --json \
  > "$OUT/doctor.json" 2>>"$OUT/device.log"
log "doctor rc $?: $(head -c 600 "$OUT/doctor.json")"

# 6. ONNX stages: ONNX Runtime vs torch float32/float16 at production size
if [ "$DEVICE" != cpu ] && [ "$(left)" -gt 300 ]; then
  timeout 150 "$PY" benchmarks/onnx_paths.py --models "$MODELS" --device cuda --out "$OUT/onnx_paths.json" \
    2>&1 | grep -v Warning | tee -a "$OUT/device.log"
fi

# 7. the whole pipe, 1-3 workers on one GPU (the JSON is rewritten after each worker count)
budget=$(( $(left) - 15 ))
log "gpu_throughput: $MINUTES min per worker count ($WORKERS), stages $STAGES, ${budget}s left"
name=gpu_throughput_device_$([ "$DEVICE" = cpu ] && echo cpu_tiny || echo cuda_full).json
timeout "$budget" "$PY" benchmarks/gpu_throughput.py --models "$MODELS" --device "$DEVICE" --minutes "$MINUTES" \
  --workers "$WORKERS" --stages "$STAGES" --out "$OUT/$name" 2>&1 \
  | grep -v -E "Warning|warn\(" | tee -a "$OUT/device.log"
rc=${PIPESTATUS[0]}
log "done (rc $rc)"
exit "$rc"
