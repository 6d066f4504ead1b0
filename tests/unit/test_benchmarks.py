"""The GPU benchmarks' CPU paths: what CI can run, and what the GPU session's script runs first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.shared_models import SHARED_MODELS, needs_shared_models

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_gpu_throughput_on_cpu_writes_its_json(tmp_path, tiny_models):
    out = tmp_path / "gpu_throughput.json"
    proc = run(["benchmarks/gpu_throughput.py", "--device", "cpu", "--minutes", "0.5", "--models", str(tiny_models),
                "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device_setting"] == "cpu" and report["models"]["kind"] == "tiny"
    assert report["reference"]["emilia_audio_h_per_gpu_h"] == 21.0
    assert any(name.endswith(".onnx") for name in report["models"]["sizes"]["files_bytes"])
    assert [r["workers"] for r in report["runs"]] == [1, 2, 3]
    episodes = report["audio"]["episodes"]
    for r in report["runs"]:
        assert r["episodes"] == {"done": episodes, "failed": 0}
        assert abs(r["audio_hours"] - 0.5 / 60) < 0.001  # every run processed the whole half minute
        assert r["pipe_audio_h_per_gpu_h"] > 0 and r["cpu_cores_used"] > 0
        assert set(r["stage_audio_h_per_busy_h"]) == {"standardize", "separate", "diarize", "vad", "asr", "dnsmos",
                                                      "export"}
        # read back from every worker's runtimes, not copied from the setting
        assert len(r["stage_devices"]) == r["workers"]
        for devices in r["stage_devices"].values():
            assert devices == {"vad": "cpu", "separate": "cpu", "dnsmos": "cpu", "asr": "cpu", "diarize": "cpu"}
        for backends in r["stage_backends"].values():
            assert backends["separate"].startswith("onnxruntime CPUExecutionProvider")
            assert backends["asr"].startswith("ctranslate2 int8 on cpu")
        assert r["gpu_util_mean_pct"] is None and r["gpu_samples"] == 0  # no GPU here: nothing invented


def test_pipe_stages_records_the_device_each_stage_ran_on(tmp_path, tiny_models):
    out = tmp_path / "pipe_stages.json"
    proc = run(["benchmarks/pipe_stages.py", "--models", str(tiny_models), "--minutes", "0.3", "--device", "cpu",
                "--stages", "separate,dnsmos", "--out", str(out)], DNSMOS_BACKEND="torch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "device" not in report and report["device_setting"] == "cpu"
    assert report["stage_devices"] == {"standardize": "cpu", "separate": "cpu", "vad": "cpu", "dnsmos": "cpu",
                                       "export": "cpu"}
    assert report["stage_backends"]["dnsmos"].startswith("torch float32 on cpu")


def test_the_old_h200_result_says_where_each_stage_ran():
    doc = json.loads((ROOT / "benchmarks/results/pipe_stages_h200_cuda_tiny.json").read_text())
    assert "device" not in doc and doc["device_setting"] == "cuda"
    assert doc["stage_devices"]["separate"] == doc["stage_devices"]["dnsmos"] == "cpu"
    assert doc["stage_devices"]["diarize"] == "cuda" and "asr" not in doc["stage_s_per_audio_hour"]
    assert set(doc["stage_devices"]) == set(doc["stage_s_per_audio_hour"])


@needs_shared_models("dnsmos/sig_bak_ovr.onnx", "dnsmos/model_v8.onnx")
def test_the_device_script_runs_its_cpu_path(tmp_path, tiny_models):
    """benchmarks/gpu_throughput_device.sh end to end on the CPU: environment record, tiny models built from the
    real DNSMOS, doctor read-back, the throughput run; the same steps the GPU session runs with --device cuda."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "MODELS": str(tmp_path / "models"),
           "DNSMOS_DIR": str(SHARED_MODELS / "dnsmos"),
           "TIKTOKEN": str(tiny_models / ".cache" / "multilingual.tiktoken")}
    proc = subprocess.run(["bash", "benchmarks/gpu_throughput_device.sh", "--device", "cpu", "--minutes", "0.5",
                           "--workers", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["modules"]["torch"] and "gpus" in environment
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["ok"] and set(doctor["facts"]["stage_devices"].values()) == {"cpu"}
    report = json.loads((out / "gpu_throughput_device_cpu_tiny.json").read_text())
    assert report["stages"] == ["separate", "diarize", "asr", "dnsmos"]
    assert [r["workers"] for r in report["runs"]] == [1] and report["runs"][0]["episodes"]["failed"] == 0
    assert "done (rc 0)" in (out / "device.log").read_text()


def test_cpu_side_benchmarks_run_at_smoke_size(tmp_path):
    """benchmarks/cpu_side.py, every topic at its smoke size in one process: the figures of benchmarks/README.md's
    CPU table come from the same code, so it must keep running and keep comparing like with like."""
    proc = run(["-W", "ignore", "benchmarks/cpu_side.py", "smoke", "--out-dir", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs = {t: json.loads((tmp_path / f"cpu_side_{t}.json").read_text()) for t in ("audio", "shards", "dagster",
                                                                                      "sensor")}
    for topic, doc in docs.items():
        assert doc["topic"] == topic and doc["smoke"] is True
        host = doc["machine"]
        assert host["cores"] >= 1 and len(host["load_avg_at_start"]) == 3 and host["cpu_model"]
        assert host["versions"]["ffmpeg"].startswith("ffmpeg version") and host["versions"]["soxr"]
        assert host["versions"]["dagster"]

    audio = docs["audio"]
    assert audio["ffmpeg_vs_ours_snr_db"] > 60, "ffmpeg's standardized audio is not ours: the comparison is unfair"
    assert [r["ratio"] > 0 and r["ours_realtime"] > 0 for r in audio["rows"]] == [True] * 4
    sizes = audio["sizes"]
    assert sizes["ffmpeg_export_one_process_files"] == sizes["ours_export_files"] == audio["config"]["segments"]
    assert abs(sizes["ffmpeg_export_per_segment_bytes"] / sizes["ours_export_bytes"] - 1) < 0.05  # same bitrate

    shards = docs["shards"]
    assert shards["same_members"] and shards["rows"][0]["ours_bytes"] == shards["rows"][0]["baseline_bytes"]
    assert shards["payload_bytes"] > 0 and shards["rows"][0]["ratio"] > 0

    dagster = docs["dagster"]
    assert dagster["counts"]["dagster_resumed"] == dagster["counts"]["runner_resumed"] == {
        "done": 0, "resumed": 1, "failed": 0, "segments": dagster["counts"]["warmup"]["segments"]}
    assert dagster["dagster_runs_recorded"] == 1  # the run went through the instance on disk
    assert dagster["rows"][0]["overhead_s"] == round(dagster["rows"][0]["ours_s"] - dagster["rows"][0]["baseline_s"],
                                                     3)

    for size in docs["sensor"]["sizes"]:
        assert size["batches"] == -(-size["objects"] // 200)  # every object batched once, 200 to a batch
        first, steady = size["first_sweep"], size["steady_sweep"]
        assert first["requests_by_operation"]["ListObjectsV2"] >= size["objects"] // 1000 + 1
        assert first["requests_by_operation"]["PutObject"] >= size["batches"]  # a manifest per batch
        assert steady["ticks"] >= 1
        assert steady["requests_by_operation"].get("PutObject", 0) <= steady["ticks"]  # a tick record, no manifest
        assert 0 < first["tick_own_s_median"] <= first["tick_s_median"]


def test_the_device_pack_keeps_the_vad_model_the_pipe_loads(tmp_path):
    """device_packs.py drops silero-vad's unused model files: VAD must still load and run from what it keeps."""
    import importlib.metadata as md

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_packs
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    site = tmp_path / "site"
    kept = []
    for file in md.files("silero-vad"):
        name = str(file).replace("\\", "/")
        if name.startswith("silero_vad/") and device_packs._keep(name):
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(file.locate().read_bytes())
            kept.append(name)
    assert not any(n.endswith(".jit") for n in kept)  # the pack really is smaller than the wheel
    code = ("import silero_vad; from emilia_pipe.vad import SileroVad; from emilia_pipe.audio import decode;"
            "print(silero_vad.__file__); print(len(SileroVad().speech_spans(decode('samples/monologue.mp3', 24000),"
            " 24000)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, spans = proc.stdout.split()
    assert where.startswith(str(site)) and int(spans) > 3


def test_vad_paths_benchmark_runs_and_both_paths_agree(tmp_path):
    """benchmarks/vad_paths.py at a tiny size: the README's VAD table comes from it, so it must keep running, and
    the two paths it times must find the same spans."""
    out = tmp_path / "vad_paths.json"
    proc = run(["-W", "ignore", "benchmarks/vad_paths.py", "--minutes", "0.2", "--repeat", "1", "--out", str(out)],
               timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["same_spans"] is True
    assert list(report["paths"]) == ["streaming torchscript (before)", "sequence onnx (now)"]
    assert all(p["spans"] >= 3 and p["audio_s_per_s_alone"] > 0 for p in report["paths"].values())
