"""The whole chain on S3 (moto's server on 127.0.0.1) driven by the real sensor, daemon and run launcher."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import boto3
import dagster as dg
import pytest

from emilia_assets.demo import ROOT, run_daemon_until
from tests.integration.helpers import SAMPLES, assert_paired

pytestmark = pytest.mark.slow


def test_sensor_daemon_and_runs_take_s3_raw_audio_to_shards(s3_env, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster_home/dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {"RAW_AUDIO_SENSOR_INTERVAL_S": "2", "EMILIA_WORK_DIR": str(tmp_path / "work"), "EMILIA_STAGES": "",
           "EMILIA_LOCAL_STORE": str(tmp_path / "must-stay-empty")}
    s3 = boto3.client("s3", endpoint_url=s3_env["R2_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")
    bucket = s3_env["R2_BUCKET"]
    for stem in ("two_voices", "long_silence"):
        s3.upload_file(str(SAMPLES / f"{stem}.mp3"), bucket, f"raw_audio/en/pod/{stem}.mp3")
    s3.put_object(Bucket=bucket, Key="raw_audio/en/pod/two_voices.json", Body=b'{"title": "two voices"}')

    runs = run_daemon_until({"probe_job": 1, "emilia_job": 1, "publish_job": 1}, env=env)  # ends on no progress
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 3
    assert {r.tags["dagster/partition"] for r in runs} == {runs[0].tags["dagster/partition"]}
    batch = runs[0].tags["dagster/partition"]

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"manifests/batches/{batch}.parquet" in keys
    assert len([k for k in keys if k.startswith("processed/en/") and k.endswith("/all_segments.json")]) == 2
    shard_keys = [k for k in keys if k.startswith(f"shards/en/{batch}-")]
    assert shard_keys == [f"shards/en/{batch}-00000.parquet", f"shards/en/{batch}-00000.tar"], "a tar and its twin"
    body = s3.get_object(Bucket=bucket, Key=f"shards/en/{batch}-00000.tar")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        samples = assert_paired({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    assert len(samples) >= 3
    assert not Path(env["EMILIA_LOCAL_STORE"]).exists(), "nothing went to the local store"

    # The secret key is read from the environment at run time: it is in no event, log or config Dagster kept.
    secret = s3_env["R2_SECRET_ACCESS_KEY"].encode()
    with dg.DagsterInstance.get() as instance:
        for run in runs:
            records = instance.get_records_for_run(run.run_id).records
            assert records and not any(secret in repr(r.event_log_entry).encode() for r in records)
    for path in home.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"secret written to {path}"
