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
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import assert_every_stage_ran

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


def test_s3_credentials_are_kept_as_variable_names_in_what_dagster_stores(s3_env, tmp_path):
    """What Dagster persists: the repository snapshot (what the webserver and daemon load and show), and per run the
    run record, its job and execution plan snapshots and the event log. The secret is resolved at run time only."""
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    secret, key_id = s3_env["R2_SECRET_ACCESS_KEY"], s3_env["R2_ACCESS_KEY_ID"]
    d = defs()
    repo = serialize_value(RepositorySnap.from_def(d.get_repository_def()))
    assert not (secret in repo or key_id in repo), "a credential's value is in the repository snapshot"
    assert '{\\"env\\": \\"R2_SECRET_ACCESS_KEY\\"}' in repo, "the store's config names the variable"

    @dg.asset
    def probe(store: ObjectStoreResource) -> None:
        store.open().put_bytes("probe/ok", b"1")  # the run really used the credentials

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.materialize([probe], resources={"store": d.resources["store"]}, instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        stored = [
            serialize_value(run),
            serialize_value(instance.get_job_snapshot(run.job_snapshot_id)),
            serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)),
            *(serialize_value(r.event_log_entry) for r in instance.get_records_for_run(run.run_id).records),
        ]
    on_disk = [p.read_bytes().decode("latin-1") for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert s3_store_has(s3_env, "probe/ok")
    leaks = [text[:80] for text in stored + on_disk if secret in text or key_id in text]
    assert not leaks, f"a credential's value was stored by the run ({len(leaks)} places)"
    assert any("R2_SECRET_ACCESS_KEY" in text for text in stored), "the run's job snapshot names the variable"


def s3_store_has(env: dict[str, str], key: str) -> bool:
    import boto3

    client = boto3.client("s3", endpoint_url=env["R2_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    return client.list_objects_v2(Bucket=env["R2_BUCKET"], Prefix=key).get("KeyCount", 0) == 1


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
    # The demo ends itself after --timeout seconds without run progress; the outer limit only guards against a hang.
    proc = subprocess.run([sys.executable, "-m", "emilia_assets.demo", "--timeout", "180"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shard: " in proc.stdout
    assert len(list((tmp_path / "data/shards/en").glob("*.tar"))) == 1
    docs = [json.loads(p.read_text()) for p in (tmp_path / "data/processed/en").glob("*/all_segments.json")]
    assert len(docs) == 4
    for doc in docs:
        assert_every_stage_ran(doc)
