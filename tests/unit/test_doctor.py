"""`emilia-forge doctor`: passes on a CPU machine set up for the CPU, fails loudly when a CUDA stage cannot be had."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def doctor(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("EMILIA_DEVICE", "SEPARATION_DEVICE", "DNSMOS_DEVICE", "EMILIA_STAGES")}
    return subprocess.run([sys.executable, "-m", "emilia_pipe", "doctor", *args], cwd=tmp_path,
                          env={**clean, **env}, capture_output=True, text=True, timeout=600)


def test_doctor_passes_in_cpu_mode_and_reads_back_every_stage_device(tmp_path, tiny_models):
    proc = doctor(tmp_path, "--models", str(tiny_models), "--load", "--json", EMILIA_DEVICE="cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["ok"] is True
    assert report["facts"]["models"]["kind"] == "tiny"
    # read back from the loaded runtimes: every model stage of the full pipe, each on the CPU
    assert report["facts"]["stage_devices"] == {"vad": "cpu", "separate": "cpu", "dnsmos": "cpu", "asr": "cpu",
                                                "diarize": "cpu"}
    names = [c["name"] for c in report["checks"]]
    assert "import emilia_pipe.asr" in names and "workers" in names


def test_doctor_fails_clearly_when_cuda_is_asked_for_and_absent(tmp_path, tiny_models):
    proc = doctor(tmp_path, "--models", str(tiny_models), EMILIA_DEVICE="cuda")
    assert proc.returncode == 1
    assert "FAIL workers: device 'cuda' was requested but no CUDA device is visible" in proc.stdout


def test_doctor_fails_when_a_requested_cuda_stage_would_run_on_the_cpu(tmp_path, tiny_models):
    proc = doctor(tmp_path, "--models", str(tiny_models), "--load", "--stages", "separate", EMILIA_DEVICE="cpu",
                  SEPARATION_DEVICE="cuda", SEPARATION_BACKEND="onnxruntime")
    assert proc.returncode == 1
    assert ("FAIL load the pipeline: DeviceError: separation: device 'cuda' was requested but this onnxruntime"
            in proc.stdout)
    assert "doctor: 1 check(s) failed" in proc.stdout


def test_doctor_checks_the_torch_path_of_the_onnx_stages_too(tmp_path, tiny_models):
    """The default GPU path of separation and DNSMOS is torch: a CUDA stage torch cannot serve fails the doctor."""
    proc = doctor(tmp_path, "--models", str(tiny_models), "--load", "--stages", "separate,dnsmos",
                  EMILIA_DEVICE="cpu", DNSMOS_DEVICE="cuda:0")
    assert proc.returncode == 1
    assert ("FAIL load the pipeline: DeviceError: dnsmos: device 'cuda:0' was requested but torch sees no CUDA device"
            in proc.stdout)
    proc = doctor(tmp_path, "--models", str(tiny_models), "--load", "--json", "--stages", "separate,dnsmos",
                  EMILIA_DEVICE="cpu", SEPARATION_BACKEND="torch", DNSMOS_BACKEND="torch")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["facts"]["stage_devices"] == {"vad": "cpu", "separate": "cpu", "dnsmos": "cpu"}
    assert report["facts"]["stage_backends"]["separate"].startswith("torch float32 on cpu")
    assert report["facts"]["stage_backends"]["dnsmos"].startswith("torch float32 on cpu")
