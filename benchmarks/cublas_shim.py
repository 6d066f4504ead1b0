"""A `libcublas.so.12` that is cuBLAS 13: lets CTranslate2 4.8.5 (built for CUDA 12) run on a CUDA-13-only machine.

CTranslate2 links its CUDA runtime statically and loads cuBLAS itself: `dlopen("libcublas.so.12")`, then `dlsym` of
nine functions by name (cublasCreate_v2, cublasDestroy_v2, cublasSetStream_v2, cublasGetMathMode, cublasGetProperty,
cublasSgemm_v2, cublasSgemmStridedBatched, cublasGemmEx, cublasGemmStridedBatchedEx), all of which cuBLAS 13 still
exports with the same signatures. So the shim is an empty library named libcublas.so.12 whose one dependency is the
machine's libcublas.so.13 (torch's `nvidia` wheel): `dlsym` on its handle searches that dependency. Built with gcc;
without gcc, a symlink of the same name to libcublas.so.13 does the same job.

Only for measuring on a machine without CUDA 12 libraries (the production image ships CUDA 12 cuBLAS): whether
CTranslate2's kernels then run correctly is what `check` tests (a cuBLAS call through the shim, and with a GPU the
benchmark's own ASR stage).

    python benchmarks/cublas_shim.py build DIR      # DIR/libcublas.so.12; prepend DIR to LD_LIBRARY_PATH
    python benchmarks/cublas_shim.py check DIR      # loads it and asks cuBLAS its version (no GPU needed)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FUNCTIONS = ("cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasGetMathMode", "cublasGetProperty",
             "cublasSgemm_v2", "cublasSgemmStridedBatched", "cublasGemmEx", "cublasGemmStridedBatchedEx")


def find_cublas13() -> Path | None:
    """libcublas.so.13 from the `nvidia` wheels on sys.path (torch's CUDA 13 build brings them), else the system's."""
    for base in map(Path, sys.path):
        for sub in ("nvidia/cu13/lib", "nvidia/cublas/lib"):
            candidate = base / sub / "libcublas.so.13"
            if candidate.is_file():
                return candidate
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]:
        if d and (Path(d) / "libcublas.so.13").is_file():
            return Path(d) / "libcublas.so.13"
    return None


def build(out_dir: Path) -> tuple[Path, str]:
    """Write `out_dir/libcublas.so.12`; returns (path, how it was made)."""
    real = find_cublas13()
    if real is None:
        raise FileNotFoundError("no libcublas.so.13 on sys.path's nvidia wheels or the library path")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "libcublas.so.12"
    target.unlink(missing_ok=True)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "shim.c"
            src.write_text("/* libcublas.so.12 -> libcublas.so.13: every symbol comes from the dependency. */\n"
                           "int emilia_cublas12_shim = 13;\n")
            cmd = [gcc, "-shared", "-fPIC", "-o", str(target), str(src), "-Wl,-soname,libcublas.so.12",
                   "-Wl,--no-as-needed", f"-L{real.parent}", f"-l:{real.name}", f"-Wl,-rpath,{real.parent}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                return target, f"gcc shim depending on {real}"
            sys.stderr.write(f"gcc failed ({proc.stderr.strip()[-300:]}); falling back to a symlink\n")
    target.symlink_to(real)
    return target, f"symlink to {real}"


def check(out_dir: Path) -> dict:
    """Load the shim as CTranslate2 does (by name) and call cublasGetProperty through it: no GPU needed."""
    lib = ctypes.CDLL(str(out_dir / "libcublas.so.12"), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    missing = [f for f in FUNCTIONS if not hasattr(lib, f)]
    version = []
    for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        value = ctypes.c_int()
        status = lib.cublasGetProperty(prop, ctypes.byref(value))
        version.append(value.value if status == 0 else None)
    return {"missing": missing, "cublas_version": ".".join(str(v) for v in version)}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("build", "check"):
        print(__doc__)
        return 2
    out = Path(argv[1])
    if argv[0] == "build":
        path, how = build(out)
        print(f"{path}: {how}")
    result = check(out)
    print(result)
    return 0 if not result["missing"] and result["cublas_version"].startswith("13") else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
