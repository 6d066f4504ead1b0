"""The code location loads the way the webserver, daemon and CLI load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from emilia_assets import gpu_definitions
from emilia_assets.definitions import defs

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_are_loadable_and_complete():
    d, gpu = defs(), gpu_definitions.defs()
    dg.Definitions.validate_loadable(d)
    dg.Definitions.validate_loadable(gpu)

    def assets_of(defs_: dg.Definitions, job: str) -> set[str]:
        return {k.to_user_string() for k in defs_.resolve_job_def(job).asset_layer.executable_asset_keys}

    assert assets_of(d, "probe_job") == {"raw_episodes"}  # CPU pod
    assert assets_of(d, "publish_job") == {"hf_shards"}  # CPU pod
    assert assets_of(gpu, "emilia_job") == {"processed_segments"}  # the GPU pod, and nothing else of the chain
    assert {k.to_user_string() for k in gpu.resolve_implicit_global_asset_job_def().asset_layer.executable_asset_keys
            } == {"processed_segments"}  # what the UI's Materialize runs in the GPU location
    assert "processed_segments" not in {k.to_user_string() for k in d.resolve_implicit_global_asset_job_def()
                                        .asset_layer.executable_asset_keys}
    assert d.resolve_sensor_def("raw_audio_sensor").job_name == "probe_job"
    assert gpu.resolve_sensor_def("gpu_batch_sensor").job_name == "emilia_job"
    assert d.resolve_sensor_def("publish_sensor").job_name == "publish_job"
    assert gpu.resolve_sensor_def("gpu_courtesy_sensor").job_name == "emilia_job"  # re-queues batches there


def test_cli_validates_the_workspace():
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_s3_settings_come_from_the_environment_not_from_config(monkeypatch):
    monkeypatch.setenv("R2_BUCKET", "b")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "AKIA-not-in-config")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "secret-not-in-config")
    store = defs().resources["store"]
    dumped = repr(store)  # what Dagster stores as the resource's config: the variable's name, not its value
    assert "secret-not-in-config" not in dumped and "AKIA-not-in-config" not in dumped
    assert "R2_SECRET_ACCESS_KEY" in dumped


@pytest.mark.slow
def test_demo_runs_samples_to_shards_through_the_daemon(tmp_path, tiny_models):
    """`make demo`'s own entry point, on a scratch instance and store."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_home/dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(tmp_path / "data"),
           "RAW_AUDIO_SENSOR_INTERVAL_S": "2", "EMILIA_WORK_DIR": str(tmp_path / "work"),
           "EMILIA_MODELS_DIR": str(tiny_models), "ASR_LANGUAGE": "en",
           "HF_TEST_RELEASE": "1"}  # what `make demo` sets
    for name in ("R2_BUCKET", "EMILIA_STAGES"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "emilia_assets.demo", "--timeout", "600"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shard: " in proc.stdout
    assert len(list((tmp_path / "data/shards/en").glob("*.tar"))) == 1
    docs = [json.loads(p.read_text()) for p in (tmp_path / "data/processed/en").glob("*/all_segments.json")]
    assert len(docs) == 4
    assert all(len(d["episode"]["stages"]) == 7 for d in docs), "every stage ran"
    assert all(s["text"] and s["dnsmos"] for d in docs for s in d["segments"])
