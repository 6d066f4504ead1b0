"""The libcublas.so.12 shim that lets CTranslate2 (CUDA 12) find cuBLAS 13 on the GPU test machine."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cublas_shim  # noqa: E402

needs_cublas13 = pytest.mark.skipif(cublas_shim.find_cublas13() is None,
                                    reason="no libcublas.so.13 (torch's nvidia-cublas wheel) on this machine")


@needs_cublas13
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
def test_the_shim_answers_ctranslate2s_lookups_with_cublas_13(tmp_path):
    path, how = cublas_shim.build(tmp_path)
    assert path.name == "libcublas.so.12" and how.startswith("gcc shim")
    result = cublas_shim.check(tmp_path)
    assert result["missing"] == []  # every function CTranslate2 looks up by name
    assert result["cublas_version"].startswith("13.")


@needs_cublas13
def test_without_a_compiler_a_symlink_does_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(cublas_shim.shutil, "which", lambda name: None)
    path, how = cublas_shim.build(tmp_path)
    assert path.is_symlink() and how.startswith("symlink")
    assert cublas_shim.check(tmp_path)["cublas_version"].startswith("13.")
