"""`make test` says which tests it skipped and why, and CI (EMILIA_REQUIRE_SHARED_MODELS=1) cannot skip them.

Runs pytest the way the Makefile's `test` target does, on the DNSMOS tests, against an empty shared-models folder.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELECT = ["tests/unit/test_dnsmos.py", "-k", "clean_speech_scores or window_count"]  # one needs the files, one not


def make_test_pytest_args() -> list[str]:
    """The pytest options of the Makefile's `test` recipe (what CI runs)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    recipe = lines[lines.index("test: setup") + 1 :]
    for line in recipe:
        if not line.startswith("\t"):
            break
        if "-m pytest" in line:
            return shlex.split(line.split("-m pytest", 1)[1])
    raise AssertionError("the Makefile's test recipe runs no pytest")


def run_pytest(shared_models: Path, require: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EMILIA_REQUIRE_SHARED_MODELS"}
    env["EMILIA_SHARED_MODELS_DIR"] = str(shared_models)
    if require:
        env["EMILIA_REQUIRE_SHARED_MODELS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", *make_test_pytest_args(), *SELECT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_make_test_lists_each_skip_with_its_reason(tmp_path):
    proc = run_pytest(tmp_path, require=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 passed, 1 skipped" in out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, out[-3000:]
    assert "test_dnsmos.py" in skipped[0]
    assert f"real model files not found in {tmp_path}" in skipped[0]
    assert "dnsmos/sig_bak_ovr.onnx, dnsmos/model_v8.onnx" in skipped[0]


def test_ci_fails_a_test_whose_shared_models_are_missing(tmp_path):
    proc = run_pytest(tmp_path, require=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "1 passed" in out and "1 error" in out and "skipped" not in out, out[-3000:]
    assert "EMILIA_REQUIRE_SHARED_MODELS=1 but real model files not found" in out
