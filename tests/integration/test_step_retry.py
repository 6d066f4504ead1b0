"""A batch whose store goes away midway is retried by processed_segments' RetryPolicy, and the retry resumes.

The real CLI (`dagster asset materialize`, the run in its own process, on a real SQLite instance) runs a batch of three
episodes from an S3 server (moto, on 127.0.0.1) reached through a TCP relay. Once an episode is complete the test
cuts the relay, as a network partition or an outage of the endpoint would: the step fails on the store. When the
step is up for retry the relay is restored; the retry must resume the finished episodes untouched and do the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest

from emilia_assets.versions import process_code_version
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import SAMPLES, batch_from_sensor

ROOT = Path(__file__).resolve().parents[2]


class Relay:
    """A TCP relay to the store that can be cut (open connections reset, new ones closed at once) and restored."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.cut = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.cut.set()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def up(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.server.close()
        self.down()


def instance_at(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def events(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> list:
    """Events of this kind in the instance's (only) run."""
    return [e for run in instance.get_runs() for e in instance.all_logs(run.run_id, of_type=kind)]


def objects(s3, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object under prefix."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out |= {o["Key"]: (o["ETag"], o["LastModified"]) for o in page.get("Contents", [])}
    return out


@pytest.fixture
def model_set(tmp_path: Path, tiny_models: Path) -> Path:
    """A models.json of its own (the tiny models by absolute path), to see its code version on the materialization."""
    folder = tmp_path / "models"
    folder.mkdir()
    doc = json.loads((tiny_models / "models.json").read_text())
    doc = {k: v if k == "kind" or not str(v).startswith("./") else str(tiny_models / v[2:]) for k, v in doc.items()}
    (folder / "models.json").write_text(json.dumps(doc))
    return folder


def test_a_store_outage_midway_is_retried_and_the_retry_resumes(s3_env, tmp_path, model_set):
    bucket = s3_env["R2_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=s3_env["R2_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="test-key-id", aws_secret_access_key="test-secret")
    for i, stem in enumerate(["music_bed", "long_silence", "monologue"]):
        s3.upload_file(str(SAMPLES / f"{stem}.mp3"), bucket, f"raw_audio/en/show{i % 2}/{stem}.mp3")
    direct = ObjectStoreResource(bucket=bucket, endpoint_url=s3_env["R2_ENDPOINT_URL"], access_key_id="test-key-id",
                                 secret_access_key="test-secret", region_name="us-east-1")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_at(home) as instance:
        (batch,) = batch_from_sensor(instance, direct)

    host, port = s3_env["R2_ENDPOINT_URL"].removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    env = {**os.environ, "DAGSTER_HOME": str(home), "R2_ENDPOINT_URL": relay.url,
           "S3_MAX_ATTEMPTS": "1",  # the client's own retries would only slow the outage down
           "PROCESS_RETRY_DELAY_S": "2", "EMILIA_STAGES": "", "EMILIA_MODELS_DIR": str(model_set),
           "EMILIA_WORK_DIR": str(tmp_path / "work")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "emilia_assets.gpu_definitions",
         "--select", "processed_segments", "--partition", batch],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()

    def wait_for(what: str, done, timeout_s: float = 120.0):
        deadline = time.monotonic() + timeout_s
        while not (result := done()):
            assert proc.poll() is None, f"the run ended before {what}:\n{b''.join(output).decode()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
            time.sleep(0.05)
        return result

    try:
        wait_for("a finished episode", lambda: objects(s3, bucket, "processed/_episodes/"))
        relay.down()
        with instance_at(home) as instance:
            wait_for("the step's retry", lambda: events(instance, dg.DagsterEventType.STEP_UP_FOR_RETRY))
        finished = objects(s3, bucket, "processed/_episodes/")
        relay.up()
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        relay.close()
    assert rc == 0, b"".join(output).decode()[-3000:]

    finished_ids = {k.rsplit("/", 1)[1].removesuffix(".json") for k in finished}
    assert 1 <= len(finished_ids) < 3
    before = {k: v for eid in finished_ids for k, v in objects(s3, bucket, "processed/en/").items() if f"/{eid}/" in k}
    after = objects(s3, bucket, "processed/")
    # the finished episodes' markers and files were not written again
    assert {k: after[k] for k in finished} == finished
    assert {k: after[k] for k in before} == before

    with instance_at(home) as instance:
        assert len(events(instance, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
        (retry,) = events(instance, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert retry.step_key == "processed_segments"
        assert len(events(instance, dg.DagsterEventType.STEP_START)) == 1
        assert len(events(instance, dg.DagsterEventType.STEP_RESTARTED)) == 1
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        mat = instance.get_latest_materialization_event(dg.AssetKey("processed_segments"))
    meta = {k: v.value for k, v in mat.asset_materialization.metadata.items()}
    assert meta["resumed"] == len(finished_ids)
    assert meta["done"] == 3 - len(finished_ids)
    assert meta["failed"] == 0
    # the code version the location reported for this model set, on the materialization and in its tags
    version = process_code_version(str(model_set))
    assert "models-tiny-" in version
    assert meta["code_version"] == version == mat.asset_materialization.tags["dagster/code_version"]
    assert mat.asset_materialization.tags.get("dagster/data_version")

    segments = pl.read_parquet(s3.get_object(Bucket=bucket, Key=f"processed/_batches/{batch}.segments.parquet")
                               ["Body"].read())
    assert segments["id"].n_unique() == segments.height == meta["segments"] > 0
    mp3s = [k for k in after if k.startswith("processed/en/") and k.endswith(".mp3")]
    assert len(mp3s) == segments.height  # one MP3 per catalogued segment, none left from the cut attempt
    shutil.rmtree(tmp_path / "work", ignore_errors=True)
