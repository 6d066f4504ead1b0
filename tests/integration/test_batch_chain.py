"""The three assets over one batch on the local store: outputs, bad input, shards."""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import polars as pl
import pytest
import soundfile as sf

from resources.object_store import ObjectStoreResource
from tests.integration.helpers import (
    assert_every_stage_ran,
    assert_paired,
    batch_from_sensor,
    materialize_batch,
    metadata,
    read_tar,
    seed_samples,
    status_table,
)


@pytest.fixture
def store(tmp_path):
    return ObjectStoreResource(local_root=str(tmp_path / "store"))


def test_batch_runs_raw_audio_to_shards_with_every_stage(store, tmp_path, full_pipe):
    root = tmp_path / "store"
    keys = seed_samples(root, ["two_voices", "long_silence"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        # the tiny models have random weights: publishing them is a test release, which must be asked for
        result = materialize_batch(instance, store, batch, pipe=full_pipe, test_release=True)
        assert result.success
        meta = metadata(result, "processed_segments")
        assert (meta["episodes"], meta["done"], meta["failed"]) == (2, 2, 0)
        assert meta["segments"] > 2 and 0 < meta["hours_out"] <= meta["hours_in"]
        assert meta["wall_s_per_audio_hour"] > 0

    assert (root / "manifests/batches" / f"{batch}.parquet").is_file()
    for key in keys:
        ep = pl.read_parquet(root / "manifests/batches" / f"{batch}.parquet").filter(pl.col("audio_key") == key)
        eid = ep["episode_id"][0]
        ep_dir = root / "processed/en" / eid
        doc = json.loads((ep_dir / "all_segments.json").read_text())
        assert_every_stage_ran(doc)
        mp3s = sorted(p.name for p in ep_dir.glob("*.mp3"))
        assert mp3s == sorted(s["wav"] for s in doc["segments"])
        for seg in doc["segments"]:
            assert 3.0 <= seg["duration"] <= 30.0
            assert seg["text"] and seg["language"] == "en"
            assert seg["speaker"].startswith(f"{eid}_S")
            assert set(seg["dnsmos"]) == {"sig", "bak", "ovrl", "p808"}
            assert all(1.0 <= v <= 5.0 for v in seg["dnsmos"].values())
            info = sf.info(ep_dir / seg["wav"])
            assert info.samplerate == 24_000 and info.channels == 1
            assert abs(info.duration - seg["duration"]) < 0.1

    # the 15 s silence of long_silence is not inside any segment
    ls = [s for s in json.loads(next(root.glob("processed/en/long_silence-*/all_segments.json")).read_text())
          ["segments"]]
    assert not any(s["start"] < 12.0 and s["end"] > 20.0 for s in ls)

    shards = sorted(root.glob(f"shards/en/{batch}-*.tar"))
    assert [s.name for s in shards] == [f"{batch}-00000.tar"]
    samples = assert_paired(read_tar(shards[0]))
    assert len(samples) == meta["segments"]
    assert {"id", "wav", "text", "duration", "speaker", "language", "dnsmos"} <= set(samples[0])
    assert all(isinstance(x["dnsmos"], float) and x["text"] for x in samples)
    # provenance: every sample names the model set that made it, and the release says it is a test release
    index = pl.read_parquet(root / "index" / f"{batch}.parquet")
    assert set(index["model_kind"]) == {"tiny"} and index["model_set"].n_unique() == 1
    assert len({x["model_set"] for x in samples}) == 1 and all(x["code_version"] for x in samples)
    assert "TEST RELEASE" in (root / "card/README.md").read_text()


def test_publishing_random_weight_output_without_the_flag_fails_clearly(store, tmp_path, full_pipe):
    root = tmp_path / "store"
    seed_samples(root, ["monologue"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        result = materialize_batch(instance, store, batch, pipe=full_pipe, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert failure.step_key == "hf_shards"
        text = str(failure.event_specific_data)
        assert "random-weight models" in text and "HF_TEST_RELEASE=1" in text
    assert not (root / "shards").exists() and not (root / "index").exists()


def test_broken_files_are_recorded_and_the_rest_of_the_batch_succeeds(store, tmp_path):
    root = tmp_path / "store"
    seed_samples(root, ["music_bed", "monologue"])
    bad = root / "raw_audio/en/show"
    (bad / "empty.mp3").write_bytes(b"")
    (bad / "truncated.mp3").write_bytes((root / "raw_audio/en/show/music_bed.mp3").read_bytes()[:600])
    (bad / "notes.m4a").write_text("these are my show notes, not audio\n" * 20)
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        result = materialize_batch(instance, store, batch, max_failure_fraction=0.9)
        assert result.success
        probe_meta = metadata(result, "raw_episodes")
        assert probe_meta["unreadable"] == 3
        meta = metadata(result, "processed_segments")
        assert (meta["done"], meta["failed"]) == (2, 3)

    status = {r["audio_key"].rsplit("/", 1)[1]: r for r in status_table(root, batch).iter_rows(named=True)}
    assert status["music_bed.mp3"]["status"] == status["monologue.mp3"]["status"] == "done"
    assert "empty file" in status["empty.mp3"]["error"]
    assert "truncated" in status["truncated.mp3"]["error"]
    assert "not a readable audio file" in status["notes.m4a"]["error"]
    for name in ("empty.mp3", "truncated.mp3", "notes.m4a"):
        assert status[name]["status"] == "failed"
        assert f"raw_audio/en/show/{name}" in status[name]["error"], "the error names the file"
    assert not list(root.glob("processed/*/empty-*"))


def test_too_many_failures_fail_the_step_but_keep_the_record(store, tmp_path):
    root = tmp_path / "store"
    seed_samples(root, ["long_silence"])
    for i in range(2):
        (root / f"raw_audio/en/show/broken{i}.mp3").write_bytes(b"")
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        result = materialize_batch(instance, store, batch, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "2/3 episodes" in failure.event_specific_data.error.message
        # bad data: processed_segments' RetryPolicy does not try it again (it would fail the same way)
        assert "not retried" in failure.event_specific_data.error.message
        assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    status = status_table(root, batch)
    assert sorted(status["status"].to_list()) == ["done", "failed", "failed"]


def test_rebuilding_shards_is_byte_identical_and_leaves_no_stale_shard(store, tmp_path):
    root = tmp_path / "store"
    seed_samples(root, ["two_voices", "monologue", "music_bed"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        assert materialize_batch(instance, store, batch, max_shard_mb=0.3).success
        first = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("shards/en/*.tar")}
        assert len(first) > 1
        from emilia_assets.assets.publish import hf_shards

        again = materialize_batch(instance, store, batch, selection=[hf_shards], max_shard_mb=0.3)
        assert again.success
        second = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("shards/en/*.tar")}
        assert second == first
        ids = [s["id"] for p in sorted(root.glob("shards/en/*.tar")) for s in assert_paired(read_tar(p))]
        assert len(ids) == len(set(ids)) == metadata(again, "hf_shards")["samples"]


def test_fewer_shards_on_rebuild_remove_the_old_tail(store, tmp_path):
    from emilia_assets.assets.publish import hf_shards

    root = tmp_path / "store"
    seed_samples(root, ["two_voices", "monologue"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        assert materialize_batch(instance, store, batch, max_shard_mb=0.2).success
        assert len(list(root.glob("shards/en/*.tar"))) > 2
        n = metadata(materialize_batch(instance, store, batch, selection=[hf_shards]), "hf_shards")["samples"]
    shards = list(root.glob("shards/en/*.tar"))
    assert [p.name for p in shards] == [f"{batch}-00000.tar"]
    assert len(assert_paired(read_tar(shards[0]))) == n
