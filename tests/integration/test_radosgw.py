"""The S3 backend and the raw-audio sensor against a real Ceph radosgw 16 over HTTPS (tests/radosgw_fixture.py;
skipped, saying why, where Ceph is not installed): what tests/unit/test_s3_compatible.py checks against the proxy
that imitates it, here on the real server."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from emilia_pipe.batching import MANIFEST_PREFIX, ScanCursor
from emilia_store import S3Store, StoreAuthError, iter_objects
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource
from tests.radosgw_fixture import Radosgw

pytest_plugins = ["tests.radosgw_fixture"]  # the `radosgw` fixture


@pytest.fixture
def bucket(radosgw: Radosgw, request: pytest.FixtureRequest) -> str:
    name = f"emilia-{abs(hash(request.node.nodeid)) % 10**8}"
    _client(radosgw).create_bucket(Bucket=name)
    return name


def _client(radosgw: Radosgw, **kw):
    from emilia_store import S3Settings

    return S3Settings(endpoint_url=radosgw.url, access_key_id=radosgw.access_key_id,
                      secret_access_key=radosgw.secret_access_key, region_name="us-east-1",
                      ca_bundle=str(radosgw.ca_file), **kw).client()


def _resource(radosgw: Radosgw, bucket: str, **kw) -> ObjectStoreResource:
    args = {"bucket": bucket, "endpoint_url": radosgw.url, "access_key_id": radosgw.access_key_id,
            "secret_access_key": radosgw.secret_access_key, "region_name": "us-east-1",
            "ca_bundle": str(radosgw.ca_file)}
    return ObjectStoreResource(**{**args, **kw})


def test_default_checksums_are_refused_and_the_store_writes(radosgw: Radosgw, bucket: str, tmp_path: Path):
    with pytest.raises(ClientError, match="MissingContentLength"):
        _client(radosgw, checksums="when_supported", max_attempts=1).put_object(Bucket=bucket, Key="k", Body=b"1")

    store = _resource(radosgw, bucket).open()
    store.put_bytes("index/b.parquet", b"PAR1")
    store.transfer = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(11 * 2**20))
    store.put_file(big, "shards/en/b-00000.tar")
    back = tmp_path / "back.tar"
    store.get_file("shards/en/b-00000.tar", back)
    assert back.read_bytes() == big.read_bytes()
    head = store.client.head_object(Bucket=bucket, Key="shards/en/b-00000.tar")
    assert head["ETag"].endswith('-3"') and head["ContentType"] == "application/x-tar"
    assert store.client.head_object(Bucket=bucket, Key="index/b.parquet")["ContentType"] == (
        "application/vnd.apache.parquet")


def test_wrong_secret_is_one_clear_error(radosgw: Radosgw, bucket: str):
    wrong = "radosgw-wrong-secret-never-printed"
    _resource(radosgw, bucket).open().put_bytes("k.json", b"{}")
    bad = _resource(radosgw, bucket, secret_access_key=wrong).open()
    for operation, call in {"HeadObject": lambda: bad.exists("k.json"), "GetObject": lambda: bad.get_bytes("k.json"),
                            "ListObjectsV2": lambda: bad.list_page(""),
                            "PutObject": lambda: bad.put_bytes("n.json", b"{}")}.items():
        with pytest.raises(StoreAuthError) as caught:
            call()
        message = str(caught.value)
        for part in (operation, bucket, radosgw.url, radosgw.access_key_id):
            assert part in message, (part, message)
        assert wrong not in message and radosgw.secret_access_key not in message


def test_listing_and_sensor_over_radosgw(radosgw: Radosgw, bucket: str):
    from emilia_assets.definitions import defs
    from sensors.raw_audio import raw_audio_sensor

    direct = _client(radosgw)
    keys = [f"raw_audio/{'de' if i % 3 == 0 else 'en'}/src{i % 7}/ep{i:04d}.mp3" for i in range(1100)]
    for k in keys:
        direct.put_object(Bucket=bucket, Key=k, Body=b"x")
    store_res = _resource(radosgw, bucket)
    store = store_res.open()
    assert isinstance(store, S3Store)
    assert [o.key for o in iter_objects(store, "raw_audio/", page_size=300)] == sorted(keys)

    batching = BatchingResource(max_episodes=100, page_size=250, max_pages_per_tick=2)
    with dg.instance_for_test() as instance:
        cursor, ticks = None, 0
        while ScanCursor.loads(cursor).sweep < 2:
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs(),
                                          resources={"store": store_res, "batching": batching})
            result = raw_audio_sensor(ctx)
            for req in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            cursor, ticks = result.cursor, ticks + 1
            assert ticks < 20
    batched = [k for o in iter_objects(store, MANIFEST_PREFIX)
               for k in pl.read_parquet(store.get_bytes(o.key))["audio_key"].to_list()]
    assert sorted(batched) == sorted(keys)
