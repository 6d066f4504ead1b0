"""The S3 backend against an S3-compatible server that behaves like Ceph radosgw (tests/s3_compat_proxy.py): HTTPS
uploads without checksum trailers, clear authentication errors, listings with short and empty pages, and the
raw-audio sensor over such listings. Plus content types and the client settings."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from emilia_pipe.batching import MANIFEST_PREFIX, ScanCursor
from emilia_store import S3Store, iter_objects, write_parquet
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource
from tests.s3_compat_proxy import Behaviour, S3CompatProxy

KEY_ID = "test-key-id"  # what the s3_env fixture's bucket was made with; moto ignores it, the proxy checks it
SECRET = "test-secret"
WRONG_SECRET = "Wr0ng-s3cret-that-must-never-be-printed"


@pytest.fixture
def radosgw(s3_server: str, s3_env: dict[str, str], tmp_path: Path) -> Iterator[S3CompatProxy]:
    """HTTPS, checksum trailers refused, signatures checked."""
    with S3CompatProxy(s3_server, tmp_path / "tls", Behaviour(keys={KEY_ID: SECRET})) as proxy:
        yield proxy


def resource(proxy: S3CompatProxy, s3_env: dict[str, str], **kw) -> ObjectStoreResource:
    args = {
        "bucket": s3_env["R2_BUCKET"],
        "endpoint_url": proxy.url,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
        "region_name": "us-east-1",
        "ca_bundle": str(proxy.ca_file) if proxy.ca_file else "",
    }
    return ObjectStoreResource(**{**args, **kw})


def moto_client(s3_server: str):
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


# --- item 6: writes over HTTPS to radosgw -------------------------------------------------------------------


def test_botocore_default_checksums_are_refused_over_https(radosgw: S3CompatProxy, s3_env: dict[str, str]):
    """The failure the store's settings avoid, reproduced: the client as it was built before (dagster-aws, default
    checksums; its S3Resource takes no CA file, so its client function directly) reads and lists, but every write is
    refused."""
    from dagster_aws.s3.utils import construct_s3_client

    client = construct_s3_client(1, endpoint_url=radosgw.url, aws_access_key_id=KEY_ID,
                                 aws_secret_access_key=SECRET, region_name="us-east-1", verify=str(radosgw.ca_file))
    bucket = s3_env["R2_BUCKET"]
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    with pytest.raises(ClientError, match="MissingContentLength"):
        client.put_object(Bucket=bucket, Key="k.json", Body=b"{}")
    assert radosgw.log[-1].headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


def test_store_writes_over_https_to_radosgw(radosgw: S3CompatProxy, s3_env: dict[str, str], tmp_path: Path):
    store = resource(radosgw, s3_env).open()
    assert isinstance(store, S3Store)
    store.put_bytes("manifests/a.json", b'{"a": 1}')
    small = tmp_path / "small.mp3"
    small.write_bytes(os.urandom(10_000))
    store.put_file(small, "raw_audio/en/s/small.mp3")
    store.transfer = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(11 * 2**20))
    store.put_file(big, "shards/en/b-00000.tar")  # CreateMultipartUpload, 3 x UploadPart, Complete

    assert store.get_bytes("manifests/a.json") == b'{"a": 1}'
    back = tmp_path / "back.tar"
    store.get_file("shards/en/b-00000.tar", back)
    assert back.read_bytes() == big.read_bytes()
    assert store.get_bytes("raw_audio/en/s/small.mp3") == small.read_bytes()
    assert [o.key for o in iter_objects(store, "")] == [
        "manifests/a.json", "raw_audio/en/s/small.mp3", "shards/en/b-00000.tar",
    ]
    writes = [s for s in radosgw.log if s.method in ("PUT", "POST")]
    assert sum("uploadId" in s.query and s.method == "PUT" for s in writes) == 3
    assert all(s.status == 200 for s in writes), [(s.method, s.path, s.status) for s in writes]
    assert not any("x-amz-trailer" in s.headers for s in writes)
    # path-style addressing, which a server without wildcard DNS for buckets needs
    assert all(s.path.startswith(f"/{s3_env['R2_BUCKET']}") for s in radosgw.log)


def test_checksums_setting_reaches_the_client(radosgw: S3CompatProxy, s3_env: dict[str, str]):
    # forcing botocore's default back on shows the setting is what makes the writes above work
    store = resource(radosgw, s3_env, checksums="when_supported", max_attempts=1).open()
    with pytest.raises(ClientError, match="MissingContentLength"):
        store.put_bytes("k.json", b"{}")


@pytest.mark.parametrize(
    ("endpoint", "checksums", "expected"),
    [
        ("", "auto", "when_supported"),  # AWS
        ("https://s3.eu-west-1.amazonaws.com", "auto", "when_supported"),
        ("https://bucket.s3.cn-north-1.amazonaws.com.cn", "auto", "when_supported"),
        ("https://acct.r2.cloudflarestorage.com", "auto", "when_required"),
        ("https://ceph.internal:7480", "auto", "when_required"),
        ("http://127.0.0.1:9000", "auto", "when_required"),
        ("https://amazonaws.com.evil.example", "auto", "when_required"),
        ("https://ceph.internal:7480", "when_supported", "when_supported"),
        ("", "when_required", "when_required"),
    ],
)
def test_checksum_choice_per_endpoint(endpoint: str, checksums: str, expected: str):
    from emilia_store import S3Settings

    settings = S3Settings(endpoint_url=endpoint, checksums=checksums, region_name="us-east-1")
    assert settings.checksum_calculation() == expected
    config = settings.client().meta.config
    assert config.request_checksum_calculation == expected
    assert config.response_checksum_validation == expected


def test_client_settings(tmp_path: Path):
    from emilia_store import S3Settings

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until a connection is made")
    client = S3Settings(endpoint_url="https://ceph.internal", region_name="us-east-1", addressing_style="virtual",
                        retry_mode="adaptive", max_attempts=9, ca_bundle=str(ca)).client()
    assert client.meta.config.s3["addressing_style"] == "virtual"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 9}
    for bad, name in (({"checksums": "always"}, "checksums"), ({"addressing_style": "dns"}, "addressing_style"),
                      ({"retry_mode": "fast"}, "retry_mode"), ({"max_attempts": 0}, "max_attempts"),
                      ({"ca_bundle": str(tmp_path / "missing.pem")}, "ca_bundle")):
        with pytest.raises(ValueError, match=name):
            S3Settings(**bad)
    assert WRONG_SECRET not in repr(S3Settings(secret_access_key=WRONG_SECRET))


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from emilia_assets.definitions import object_store_from_env

    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    for k, v in {"R2_BUCKET": "b", "R2_ENDPOINT_URL": "https://ceph.internal:7480", "R2_ACCESS_KEY_ID": KEY_ID,
                 "R2_SECRET_ACCESS_KEY": SECRET, "S3_CHECKSUMS": "when_supported", "S3_ADDRESSING_STYLE": "path",
                 "S3_RETRY_MODE": "adaptive", "S3_MAX_ATTEMPTS": "3", "S3_CA_BUNDLE": str(ca)}.items():
        monkeypatch.setenv(k, v)
    res = object_store_from_env().process_config_and_initialize()
    assert (res.checksums, res.addressing_style, res.retry_mode, res.max_attempts, res.ca_bundle) == (
        "when_supported", "path", "adaptive", 3, str(ca))
    config = res.open().client.meta.config
    assert config.request_checksum_calculation == "when_supported"
    assert config.s3["addressing_style"] == "path"
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 3}


# --- item 7: content types ----------------------------------------------------------------------------------


def test_objects_carry_their_content_type(s3_store, tmp_path: Path):
    store = s3_store
    store.put_bytes("processed/_episodes/e.json", b"{}")
    write_parquet(store, "manifests/batches/b.parquet", pl.DataFrame({"a": [1]}))
    store.put_bytes("card/README.md", b"# card")
    store.put_bytes("card/assets/d.png", b"\x89PNG")
    store.put_bytes("misc/blob.bin", b"1")
    for name in ("ep.mp3", "ep.m4a", "ep.opus", "ep.wav", "ep.flac", "shard.tar"):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        store.put_file(path, f"files/{name}")
    store.transfer = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(6 * 2**20))
    store.put_file(big, "shards/en/big.tar")

    def content_type(key: str) -> str:
        return store.client.head_object(Bucket=store.bucket, Key=key)["ContentType"]

    assert "-" in store.client.head_object(Bucket=store.bucket, Key="shards/en/big.tar")["ETag"]  # multipart
    assert {k: content_type(k) for k in [
        "processed/_episodes/e.json", "manifests/batches/b.parquet", "card/README.md", "card/assets/d.png",
        "misc/blob.bin", "files/ep.mp3", "files/ep.m4a", "files/ep.opus", "files/ep.wav", "files/ep.flac",
        "files/shard.tar", "shards/en/big.tar",
    ]} == {
        "processed/_episodes/e.json": "application/json",
        "manifests/batches/b.parquet": "application/vnd.apache.parquet",
        "card/README.md": "text/markdown; charset=utf-8",
        "card/assets/d.png": "image/png",
        "misc/blob.bin": "application/octet-stream",
        "files/ep.mp3": "audio/mpeg",
        "files/ep.m4a": "audio/mp4",
        "files/ep.opus": "audio/ogg",
        "files/ep.wav": "audio/wav",
        "files/ep.flac": "audio/flac",
        "files/shard.tar": "application/x-tar",
        "shards/en/big.tar": "application/x-tar",
    }


# --- item 8: authentication errors --------------------------------------------------------------------------


@pytest.fixture
def signed(s3_server: str, s3_env: dict[str, str]) -> Iterator[S3CompatProxy]:
    """Signatures checked, over plain HTTP (TLS plays no part in these errors)."""
    with S3CompatProxy(s3_server, None, Behaviour(keys={KEY_ID: SECRET})) as proxy:
        yield proxy


def _all_text(err: BaseException) -> str:
    return str(err) + repr(err) + "".join(traceback.format_exception(err))


def test_wrong_secret_is_one_clear_error(signed: S3CompatProxy, s3_env: dict[str, str], tmp_path: Path):
    good = resource(signed, s3_env).open()
    good.put_bytes("raw_audio/en/s/ep.mp3", b"mp3")  # the proxy accepts correct signatures
    assert good.exists("raw_audio/en/s/ep.mp3")

    bad = resource(signed, s3_env, secret_access_key=WRONG_SECRET).open()
    src = tmp_path / "up.mp3"
    src.write_bytes(b"x")
    calls = {
        "HeadObject": lambda: bad.exists("raw_audio/en/s/ep.mp3"),  # a bare 403: no code, no message
        "GetObject": lambda: bad.get_bytes("raw_audio/en/s/ep.mp3"),  # SignatureDoesNotMatch, no message
        "PutObject": lambda: bad.put_bytes("raw_audio/en/s/new.json", b"{}"),
        "ListObjectsV2": lambda: bad.list_page("raw_audio/"),
        "DeleteObject": lambda: bad.delete("raw_audio/en/s/ep.mp3"),
    }
    for operation, call in calls.items():
        with pytest.raises(PermissionError) as caught:
            call()
        message = str(caught.value)
        assert type(caught.value).__name__ == "StoreAuthError"
        for part in (operation, s3_env["R2_BUCKET"], signed.url, KEY_ID, "raw_audio/"):
            assert part in message, (part, message)
        assert WRONG_SECRET not in _all_text(caught.value) and SECRET not in message
    # boto3's transfers (upload_file/download_file) wrap the refusal in their own errors: same message
    for operation, call in {"PutObject": lambda: bad.put_file(src, "raw_audio/en/s/up.mp3"),
                            "GetObject": lambda: bad.get_file("raw_audio/en/s/ep.mp3", tmp_path / "d.mp3")}.items():
        with pytest.raises(PermissionError, match=operation) as caught:
            call()
        assert KEY_ID in str(caught.value) and WRONG_SECRET not in _all_text(caught.value)
    assert good.exists("raw_audio/en/s/ep.mp3")  # the refused delete did nothing


def test_unknown_access_key_is_named(signed: S3CompatProxy, s3_env: dict[str, str]):
    store = resource(signed, s3_env, access_key_id="no-such-key", secret_access_key=WRONG_SECRET).open()
    with pytest.raises(PermissionError, match="InvalidAccessKeyId") as caught:
        store.get_bytes("x.json")
    assert "'no-such-key'" in str(caught.value) and WRONG_SECRET not in _all_text(caught.value)


def test_missing_objects_are_still_missing(signed: S3CompatProxy, s3_env: dict[str, str], tmp_path: Path):
    store = resource(signed, s3_env).open()
    assert not store.exists("nope.json")
    with pytest.raises(KeyError):
        store.get_bytes("nope.json")
    with pytest.raises(KeyError):
        store.get_file("nope.json", tmp_path / "x")


# --- item 9: short and empty list pages ---------------------------------------------------------------------


@pytest.fixture
def short_pages(s3_server: str, s3_env: dict[str, str]) -> Iterator[S3CompatProxy]:
    """Plain HTTP (the listing behaviours alone): pages at most 3/4 of MaxKeys, and an empty page marked truncated
    before every real one."""
    behaviour = Behaviour(short_page=lambda n: max(1, n * 3 // 4), empty_pages=True)
    with S3CompatProxy(s3_server, None, behaviour) as proxy:
        yield proxy


def _client(proxy: S3CompatProxy):
    return boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET, config=Config(request_checksum_calculation="when_required"))


def test_listing_goes_on_past_short_and_empty_pages(short_pages: S3CompatProxy, s3_server: str, s3_env):
    bucket = s3_env["R2_BUCKET"]
    direct = moto_client(s3_server)
    keys = sorted(f"p/k{i:03d}.json" for i in range(37))
    for k in keys:
        direct.put_object(Bucket=bucket, Key=k, Body=b"1")
    store = S3Store(_client(short_pages), bucket)

    first = store.list_page("p/", max_keys=10)
    assert first.objects == [] and first.truncated and first.token
    second = store.list_page("p/", max_keys=10, token=first.token)
    assert [o.key for o in second.objects] == keys[:7] and second.truncated  # short: 7 of the 10 asked for

    assert [o.key for o in iter_objects(store, "p/", page_size=10)] == keys
    assert [o.key for o in iter_objects(store, "p/", start_after="p/k030.json", page_size=10)] == keys[31:]


def test_sensor_batches_everything_once_over_short_and_empty_pages(
    short_pages: S3CompatProxy, s3_server: str, s3_env: dict[str, str]
):
    from emilia_assets.definitions import defs
    from sensors.raw_audio import raw_audio_sensor

    bucket = s3_env["R2_BUCKET"]
    direct = moto_client(s3_server)
    keys = [f"raw_audio/{'de' if i % 3 == 0 else 'en'}/src{i % 7}/ep{i:04d}.mp3" for i in range(230)]
    for k in keys:
        direct.put_object(Bucket=bucket, Key=k, Body=b"x" * 10)
    store_res = resource(short_pages, s3_env)
    batching = BatchingResource(max_episodes=25, page_size=40, max_pages_per_tick=3)

    def tick(instance, cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs(),
                                      resources={"store": store_res, "batching": batching})
        result = raw_audio_sensor(ctx)
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result

    def batched() -> list[str]:
        s = store_res.open()
        return [k for o in iter_objects(s, MANIFEST_PREFIX)
                for k in pl.read_parquet(s.get_bytes(o.key))["audio_key"].to_list()]

    with dg.instance_for_test() as instance:
        cursor, ticks = None, 0
        while ScanCursor.loads(cursor).sweep == 0:
            cursor = tick(instance, cursor).cursor
            ticks += 1
            assert ticks <= 30, "the scan made no progress past empty pages"
        assert sorted(batched()) == sorted(keys)
        assert "30" in {s.query.get("max-keys") for s in short_pages.log}  # pages were short

        late = "raw_audio/aa/late/ep.mp3"  # behind everything already walked
        direct.put_object(Bucket=bucket, Key=late, Body=b"late")
        while ScanCursor.loads(cursor).sweep == 1:
            cursor = tick(instance, cursor).cursor
            ticks += 1
            assert ticks <= 60
        assert sorted(batched()) == sorted([*keys, late])
