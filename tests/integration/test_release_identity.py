"""The release through the real sensor, assets and Dagster instance, with a Hub on 127.0.0.1: a raw object whose
content changes, an explicit re-processing, two publish runs at once, bounded reads, random-weight refusal."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import dagster as dg
import polars as pl
import yaml

from emilia_assets.assets.publish import hf_shards
from emilia_assets.definitions import defs
from emilia_assets.partitions import episode_batches
from resources.batching import BatchingResource
from resources.huggingface import HuggingFaceResource
from resources.object_store import ObjectStoreResource
from sensors.raw_audio import raw_audio_sensor
from tests.hub_fixture import TOKEN
from tests.integration.helpers import SAMPLES, materialize_batch, metadata, seed_samples
from tests.release_helpers import TINY_MODELS, CountingStore, Ep, batch_id, fabricate_batch

pytest_plugins = ["tests.hub_fixture"]  # the `fake_hub` fixture
REPO = "emilia-forge/release-test"
CHANGING = "raw_audio/en/show/two_voices.mp3"
ROOT = Path(__file__).resolve().parents[2]


def instance_at(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def tick(instance, store, cursor):
    """One raw_audio_sensor evaluation with the cursor carried over, as the daemon does; returns (batches, cursor)."""
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs(),
                                  resources={"store": store, "batching": BatchingResource()})
    result = raw_audio_sensor(ctx)
    ids = []
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        ids += list(req.partition_keys)
    return ids, result.cursor


def index_rows(root) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in sorted((root / "index").glob("*.parquet"))
              if not p.name.endswith(".shards.parquet")]
    return pl.concat(frames, how="diagonal_relaxed")


def hub_tar_keys(files: dict[str, bytes]) -> list[str]:
    keys = []
    for path, data in files.items():
        if path.startswith("data/") and path.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                keys += [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".mp3")]
    return keys


def assert_hub_consistent(files: dict[str, bytes], card: bytes) -> pl.DataFrame:
    """Every sample once, index == tars, checksums == files, the card is the store's."""
    keys = hub_tar_keys(files)
    assert len(keys) == len(set(keys)), "a sample twice on the Hub"
    index = pl.concat([pl.read_parquet(io.BytesIO(d)) for p, d in files.items()
                       if p.startswith("index/") and p.count("/") == 1 and not p.endswith(".shards.parquet")],
                      how="diagonal_relaxed")
    assert sorted(index["key"]) == sorted(keys)
    sums = pl.concat([pl.read_parquet(io.BytesIO(d)) for p, d in files.items() if p.startswith("index/shards/")])
    data_files = {p: d for p, d in files.items() if p.startswith("data/")}
    assert sorted(sums["shard"]) == sorted(data_files)
    for r in sums.iter_rows(named=True):
        assert r["sha256"] == hashlib.sha256(data_files[r["shard"]]).hexdigest()
    assert files["README.md"] == card
    return index


def test_a_changed_raw_object_is_processed_again_and_replaces_its_old_version(fake_hub, tmp_path):
    root = tmp_path / "store"
    store = ObjectStoreResource(local_root=str(root))
    hf = HuggingFaceResource(repo_id=REPO, token=TOKEN, endpoint=fake_hub.endpoint)
    seed_samples(root, ["two_voices", "monologue"])
    with dg.instance_for_test() as instance:
        (b1,), cursor = tick(instance, store, None)
        assert materialize_batch(instance, store, b1, hf=hf).success
        first = index_rows(root).filter(pl.col("audio_key") == CHANGING)
        assert first.height > 0
        old_episode = first["episode_id"][0]

        # The object's content changes (a re-upload of a corrected episode): same key, new bytes, new timestamp.
        shutil.copyfile(SAMPLES / "music_bed.mp3", root / CHANGING)
        batches, cursor = tick(instance, store, cursor)
        assert len(batches) == 1, "the next sweep batches the new version"
        (b2,) = batches
        manifest = pl.read_parquet(root / f"manifests/batches/{b2}.parquet")
        assert manifest["audio_key"].to_list() == [CHANGING]
        assert manifest["episode_id"][0] != old_episode, "a new version is a new episode"

        run = materialize_batch(instance, store, b2, hf=hf)
        assert run.success, "publishing succeeds"
        meta = metadata(run, "processed_segments")
        assert (meta["done"], meta["resumed"]) == (1, 0), "processed, not resumed from the old episode's marker"
        pub = metadata(run, "hf_shards")
        assert pub["superseded"] == 1 and pub["rewritten_batches"] == [b1]

        # and publishing keeps working after it
        shutil.copyfile(SAMPLES / "long_silence.mp3", root / "raw_audio/en/show/later.mp3")
        (b3,), cursor = tick(instance, store, cursor)
        assert materialize_batch(instance, store, b3, hf=hf).success

    rows = index_rows(root)
    held = rows.filter(pl.col("audio_key") == CHANGING)
    assert set(held["episode_id"]) == {manifest["episode_id"][0]} and set(held["batch_id"]) == {b2}
    assert held["episode_version"][0] == manifest["version"][0]
    assert not rows.filter(pl.col("episode_id") == old_episode).height, "no segment of the old version"
    assert rows["key"].n_unique() == rows.height
    from emilia_publish.release import verify_release

    assert verify_release(store.open()) == []
    files = fake_hub.files(REPO)
    index = assert_hub_consistent(files, (root / "card/README.md").read_bytes())
    assert not index.filter(pl.col("episode_id") == old_episode).height
    assert not [k for k in hub_tar_keys(files) if k.startswith(old_episode)]


def test_reprocessing_on_purpose_replaces_the_episodes_segments(tmp_path):
    from emilia_pipe.cli import main as cli

    root = tmp_path / "store"
    store = ObjectStoreResource(local_root=str(root))
    seed_samples(root, ["two_voices", "monologue"])
    with dg.instance_for_test() as instance:
        (b1,), cursor = tick(instance, store, None)
        assert materialize_batch(instance, store, b1).success
        before = index_rows(root).filter(pl.col("audio_key") == CHANGING)
        assert cli(["reprocess", CHANGING, "--store", str(root)]) == 0
        batches, cursor = tick(instance, store, cursor)
        assert len(batches) == 1 and batches[0] != b1
        run = materialize_batch(instance, store, batches[0])
        assert metadata(run, "processed_segments")["done"] == 1, "processed again, not resumed"
        assert metadata(run, "hf_shards")["superseded"] == 1
        assert tick(instance, store, cursor)[0] == [], "the request is adopted once"
    after = index_rows(root).filter(pl.col("audio_key") == CHANGING)
    assert set(after["episode_id"]) == set(before["episode_id"]), "the same episode (unchanged object)"
    assert set(after["batch_id"]) == {batches[0]} and after.height == before.height
    assert index_rows(root)["key"].n_unique() == index_rows(root).height


def test_two_concurrent_publish_runs_leave_a_consistent_release(fake_hub, tmp_path):
    """Two publish runs at once, each its own process (`dagster asset materialize`), on one instance and store."""
    root = tmp_path / "store"
    seed = CountingStore(root)
    ours = {batch_id(1): [Ep("raw_audio/en/show/a.mp3", segments=6), Ep(CHANGING, "v1", 1000.0, segments=4)],
            batch_id(2): [Ep(CHANGING, "v2", 2000.0, segments=3, freq=660.0),
                          Ep("raw_audio/de/talk/b.mp3", segments=5, language="de")]}
    for bid, eps in ours.items():
        fabricate_batch(seed, bid, eps)
    from sensors.publish import keep_release_pool_at_one

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster_home/dagster.yaml", home / "dagster.yaml")
    with instance_at(home) as instance:
        instance.add_dynamic_partitions(episode_batches.name, list(ours))
        assert keep_release_pool_at_one(instance)  # what the publish sensor does on its first tick
    env = {**os.environ, "DAGSTER_HOME": str(home), "EMILIA_LOCAL_STORE": str(root), "PYTHONPATH": str(ROOT),
           "HF_REPO_ID": REPO, "HF_TOKEN": TOKEN, "HF_ENDPOINT": fake_hub.endpoint,
           "EMILIA_WORK_DIR": str(tmp_path / "work")}
    env.pop("R2_BUCKET", None)
    procs = [subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m",
                               "emilia_assets.definitions", "--select", "hf_shards", "--partition", bid],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for bid in ours]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    from emilia_publish.release import read_summary, verify_release

    store = ObjectStoreResource(local_root=str(root))
    assert verify_release(store.open()) == []
    summary, _ = read_summary(store.open())
    assert summary["generation"] == 2 and not summary["hub"]["upload"]
    # whichever ran first, the release holds the newer version of the changing object only
    rows = index_rows(root)
    assert set(rows.filter(pl.col("audio_key") == CHANGING)["episode_version"]) == {"v2"}
    assert summary["counts"]["totals"]["segments"] == rows.height == 6 + 3 + 5
    card = (root / "card/README.md").read_bytes()
    assert assert_hub_consistent(fake_hub.files(REPO), card).height == rows.height
    assert yaml.safe_load(card.decode().split("---")[1])["language"] == ["de", "en"]


def test_publishing_batch_n_reads_a_bounded_amount_through_the_asset(tmp_path, monkeypatch):
    root = tmp_path / "store"
    counting = CountingStore(root)
    monkeypatch.setattr(ObjectStoreResource, "open", lambda self: counting)
    store = ObjectStoreResource(local_root=str(root))
    reads = {}
    with dg.instance_for_test() as instance:
        for n in range(1, 9):
            bid = batch_id(n)
            fabricate_batch(counting, bid, [Ep(f"raw_audio/en/show/a{n}.mp3", None),
                                            Ep(f"raw_audio/en/show/b{n}.mp3", None)])
            instance.add_dynamic_partitions(episode_batches.name, [bid])
            counting.reset()
            assert dg.materialize([hf_shards], partition_key=bid, instance=instance,
                                  resources={"store": store, "hf": HuggingFaceResource()}).success
            reads[n] = (sum(counting.reads.values()), counting.read_bytes)
    assert reads[8][0] == reads[3][0], reads
    assert reads[8][1] <= reads[3][1] * 1.05, reads


def test_random_weight_output_needs_the_test_release_flag(tmp_path):
    root = tmp_path / "store"
    fabricate_batch(CountingStore(root), batch_id(1), [Ep(CHANGING, None, models=TINY_MODELS)])
    store = ObjectStoreResource(local_root=str(root))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(episode_batches.name, [batch_id(1)])
        refused = dg.materialize([hf_shards], partition_key=batch_id(1), instance=instance,
                                 resources={"store": store, "hf": HuggingFaceResource()}, raise_on_error=False)
        assert not refused.success
        failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message + str(failure.event_specific_data)
        assert "random-weight models" in message and "HF_TEST_RELEASE=1" in message
        assert not (root / "index").exists() and not (root / "shards").exists()
        flagged = dg.materialize([hf_shards], partition_key=batch_id(1), instance=instance,
                                 resources={"store": store, "hf": HuggingFaceResource(test_release=True)})
        assert metadata(flagged, "hf_shards")["test_release"] is True
    assert "TEST RELEASE" in (root / "card/README.md").read_text()
