"""Shared fixtures: a real S3 server (moto) on 127.0.0.1, stores of both kinds, sample audio."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests import shared_models

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
BUCKET = "emilia-test"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto in server mode: the same HTTP + boto3 path production takes to R2 (moto does not check signatures)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> dict[str, str]:
    """A fresh bucket and the seed's R2_* variables pointing at it."""
    bucket = f"{BUCKET}-{abs(hash(request.node.nodeid)) % 10**8}"
    env = {
        "R2_ENDPOINT_URL": s3_server,
        "R2_ACCESS_KEY_ID": "test-key-id",
        "R2_SECRET_ACCESS_KEY": "test-secret",
        "R2_BUCKET": bucket,
        "R2_REGION": "us-east-1",  # moto rejects R2's "auto" on CreateBucket
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="test-key-id", aws_secret_access_key="test-secret")
    client.create_bucket(Bucket=bucket)
    return env


@pytest.fixture
def s3_store(s3_env: dict[str, str]):
    from resources.object_store import ObjectStoreResource

    return ObjectStoreResource(
        bucket=s3_env["R2_BUCKET"], endpoint_url=s3_env["R2_ENDPOINT_URL"], access_key_id="test-key-id",
        secret_access_key="test-secret", region_name="us-east-1",
    ).open()


@pytest.fixture
def local_store(tmp_path: Path):
    from emilia_store import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest):
    """Both backends, for behaviour that must be identical."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def sample(tmp_path: Path):
    """Copy of a bundled sample episode by stem."""

    def get(stem: str) -> Path:
        dst = tmp_path / f"{stem}.mp3"
        shutil.copyfile(SAMPLES / f"{stem}.mp3", dst)
        return dst

    return get


SHARED_DNSMOS = shared_models.SHARED_MODELS / "dnsmos"
TINY_MODELS = ROOT / "models" / "tiny"


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """Random-weight models in the production formats (`make setup` builds them; built here if missing)."""
    from emilia_pipe.models import MANIFEST, tiny

    if not (TINY_MODELS / MANIFEST).is_file():
        tiny(TINY_MODELS, SHARED_DNSMOS if SHARED_DNSMOS.is_dir() else None)
    return TINY_MODELS


@pytest.fixture
def full_pipe(tiny_models: Path):
    """Every stage of the Emilia pipe on the tiny models. Random weights detect no language with confidence,
    so the language is given, as ASR_LANGUAGE does."""
    from resources.pipe import EmiliaPipeResource

    return EmiliaPipeResource(models_dir=str(tiny_models), asr_language="en", asr_beam_size=1)


@pytest.fixture
def fast_pipe():
    """Standardize, VAD, segmentation and export only: for tests of the orchestration around the pipe."""
    from resources.pipe import EmiliaPipeResource

    return EmiliaPipeResource(stages=[])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    shared_models.skip_where_absent(items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    shared_models.fail_where_required(item)
