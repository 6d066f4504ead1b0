"""hf_shards publishes a batch to a Hub-compatible endpoint on 127.0.0.1: faults midway, resume, no duplicates."""

from __future__ import annotations

import hashlib
import io
import tarfile

import dagster as dg
import polars as pl
import yaml

from emilia_assets.assets.publish import hf_shards
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource
from tests.hub_fixture import TOKEN
from tests.integration.helpers import batch_from_sensor, materialize_batch, metadata, seed_samples

pytest_plugins = ["tests.hub_fixture"]  # the `fake_hub` fixture
REPO = "emilia-forge/test-release"


def tar_keys(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".mp3")]


def test_batches_publish_with_faults_midway_and_rerun_uploads_nothing(fake_hub, tmp_path, caplog):
    root = tmp_path / "store"
    store = ObjectStoreResource(local_root=str(root))
    hf = HuggingFaceResource(repo_id=REPO, token=TOKEN, endpoint=fake_hub.endpoint, max_files_per_commit=2)
    seed_samples(root, ["two_voices", "monologue", "music_bed"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        assert materialize_batch(instance, store, batch, selection=None, max_shard_mb=0.3).success
        # The Hub answers 429, then 500, on the second commit: the publisher backs off and carries on.
        fake_hub.fail_next("/commit/", 429, after=1)
        fake_hub.fail_next("/commit/", 500, after=1)
        run = materialize_batch(instance, store, batch, selection=[hf_shards], max_shard_mb=0.3, hf=hf)
        meta = metadata(run, "hf_shards")
        assert meta["retries"] >= 2 and meta["commits"] >= 2
        files = fake_hub.files(REPO)
        shards = sorted(p for p in files if p.startswith("data/en/") and p.endswith(".tar"))
        parquets = sorted(p for p in files if p.startswith("data/en/") and p.endswith(".parquet"))
        assert len(shards) == meta["shards"] > 1
        assert parquets == [p[: -len(".tar")] + ".parquet" for p in shards], "a Parquet twin per tar"
        keys = [k for p in shards for k in tar_keys(files[p])]
        assert len(keys) == len(set(keys)) == meta["samples"], "every sample exactly once on the Hub"
        assert {f"index/{batch}.parquet", f"index/shards/{batch}.parquet", "README.md",
                "assets/distributions.png"} <= set(files)
        sums = pl.read_parquet(io.BytesIO(files[f"index/shards/{batch}.parquet"]))
        assert sorted(sums["sha256"]) == sorted(hashlib.sha256(files[p]).hexdigest() for p in shards + parquets)
        assert int(sums.filter(pl.col("shard").str.ends_with(".tar"))["samples"].sum()) == meta["samples"]
        header = yaml.safe_load(files["README.md"].decode().split("---")[1])
        assert "en" in header["language"]
        commits_before = len(fake_hub.commits(REPO))

        again = materialize_batch(instance, store, batch, selection=[hf_shards], max_shard_mb=0.3, hf=hf)
        assert metadata(again, "hf_shards")["uploaded_files"] == 0  # same bytes: nothing to send
        assert len(fake_hub.commits(REPO)) == commits_before
        assert sorted(p for p in fake_hub.files(REPO) if p.startswith("data/")) == sorted(shards + parquets)
    assert TOKEN not in caplog.text
    for event in run.all_events + again.all_events:
        assert TOKEN not in repr(event)
