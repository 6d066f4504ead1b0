"""The batch checks' cores without Dagster: each passes on sound output and fails on output broken on purpose.

`emilia_pipe.batch_checks` on status tables and catalogues; `emilia_publish.release_checks` on batches published by
the real release writer into a local store, then corrupted (a member deleted from a tar, provenance marked
random-weight). The same checks through Dagster, on a batch the pipe really processed: tests/integration/
test_asset_checks.py.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import polars as pl
import pytest

from emilia_pipe import batch_checks as bc
from emilia_pipe.catalogue import STATUS_SCHEMA
from emilia_pipe.segmentation import SegmentationRules
from emilia_publish import release_checks as rc
from emilia_publish.release import PublishSettings, publish_batch
from emilia_store import LocalStore, read_parquet, write_parquet
from emilia_store.layout import batch_segments_key, index_key
from tests.release_helpers import TINY_MODELS, Ep, batch_id, fabricate_batch

# ---- failed episodes ------------------------------------------------------------------------------------------------


def status(rows: list[tuple[str, str | None]]) -> pl.DataFrame:
    """(status, error) per episode, keyed like the runner keys them."""
    return pl.DataFrame([{"episode_id": f"ep{i}", "audio_key": f"raw_audio/en/show/ep{i}.mp3", "status": s,
                          "error": e and f"raw_audio/en/show/ep{i}.mp3: {e}"} for i, (s, e) in enumerate(rows)],
                        schema={k: STATUS_SCHEMA[k] for k in ("episode_id", "audio_key", "status", "error")})


def test_failed_episodes_pass_up_to_the_threshold_and_count_failures_by_reason():
    table = status([("done", None), ("resumed", None), ("failed", "empty file (0 bytes)"),
                    ("failed", "empty file (0 bytes)")])
    ok = bc.failed_episodes_under_threshold(table, 0.5)
    assert ok.passed, ok.description  # 2/4 is not *more* than 0.5: the step's own rule
    assert ok.metadata["failures_by_reason"] == {"empty file (0 bytes)": 2}
    assert bc.failed_episodes_under_threshold(status([]), 0.0).passed  # an empty batch failed nothing


def test_failed_episodes_fail_above_the_threshold():
    table = status([("done", None), ("failed", "empty file (0 bytes)"),
                    ("failed", "download failed: ConnectionError: reset"), ("failed", "RuntimeError: boom")])
    out = bc.failed_episodes_under_threshold(table, 0.5)
    assert not out.passed
    assert "3/4 episodes failed" in out.description and "more than max_failure_fraction=0.5" in out.description
    assert out.metadata["failures_by_reason"] == {"RuntimeError": 1, "download failed": 1,
                                                  "empty file (0 bytes)": 1}
    assert out.metadata["failed_fraction"] == 0.75


# ---- segment ids ----------------------------------------------------------------------------------------------------


def test_segment_ids_unique_passes_on_distinct_ids():
    out = bc.segment_ids_unique(["a_0", "a_1", "b_0"], {"a": ["a_0", "a_1"], "b": ["b_0"]})
    assert out.passed, out.description


@pytest.mark.parametrize(("catalogue", "episodes", "unreadable", "said"), [
    (["a_0", "a_0", "b_0"], {"a": ["a_0"], "b": ["b_0"]}, [], "more than once in the catalogue"),
    (["a_0", "b_0"], {"a": ["a_0", "x"], "b": ["b_0", "x"]}, [], "across the episodes' all_segments.json"),
    (["a_0"], {"a": ["a_0", "a_0"]}, [], "a_0 in a"),
    (["a_0"], {}, ["processed/en/a/all_segments.json: missing"], "unreadable"),
])
def test_segment_ids_unique_fails_on_a_duplicate_or_an_unread_episode(catalogue, episodes, unreadable, said):
    out = bc.segment_ids_unique(catalogue, episodes, unreadable)
    assert not out.passed
    assert said in out.description


# ---- durations ------------------------------------------------------------------------------------------------------


def durations(*values: float | None) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"s{i}" for i in range(len(values))], "duration": list(values)},
                        schema={"id": pl.String, "duration": pl.Float64})


def test_durations_within_the_rules_pass_at_the_bounds_and_within_rounding():
    out = bc.durations_within_rules(durations(3.0, 12.5, 30.0, 2.9995, 30.0005), SegmentationRules())
    assert out.passed, out.description
    assert (out.metadata["min_s"], out.metadata["max_s"]) == (3.0, 30.0)


def test_durations_outside_the_rules_fail_and_the_bounds_are_the_rules():
    out = bc.durations_within_rules(durations(12.0, 40.0, 2.5, None), SegmentationRules())
    assert not out.passed
    assert out.metadata["outside"] == 3 and set(out.metadata["examples"]) == {"s1", "s2", "s3"}
    assert "40.0 s" in out.description or "2.5 s" in out.description
    # other rules, other bounds: 12 s is too long for max_s=10
    assert not bc.durations_within_rules(durations(12.0), SegmentationRules(min_s=2.0, max_s=10.0,
                                                                             split_above_s=8.0)).passed


# ---- DNSMOS ---------------------------------------------------------------------------------------------------------


def scores(ovrl: list[float | None], sig: list[float | None] | None = None) -> pl.DataFrame:
    sig = sig if sig is not None else [None if v is None else v + 0.3 for v in ovrl]
    bak = [None if v is None else 4.0 - (v - 3.0) / 2 for v in ovrl]
    return pl.DataFrame({"id": [f"s{i}" for i in range(len(ovrl))], "dnsmos_ovrl": ovrl, "dnsmos_sig": sig,
                         "dnsmos_bak": bak}, schema={"id": pl.String, "dnsmos_ovrl": pl.Float64,
                                                     "dnsmos_sig": pl.Float64, "dnsmos_bak": pl.Float64})


def test_dnsmos_with_a_spread_passes():
    out = bc.dnsmos_not_collapsed(scores([2.81, 3.12, 3.4, 2.95, 3.3]))
    assert out.passed, out.description
    assert out.metadata["ovrl"]["scored"] == 5


@pytest.mark.parametrize(("frame", "said"), [
    (scores([3.0] * 5), "std 0.0 < 0.005"),  # every score equal
    (scores([3.1, 3.1001, 3.1002, 3.1]), "dnsmos_ovrl"),  # a spread of ten-thousandths is no spread
    (scores([2.8, float("nan"), 3.3]), "NaN or infinite"),
    (scores([float("nan")]), "NaN or infinite"),  # NaN fails even in a batch too small for a spread
    (scores([2.8, 3.1, 3.4], sig=[3.5, 3.5, 3.5]), "dnsmos_sig"),  # one head collapsed is enough
])
def test_dnsmos_collapsed_fails(frame, said):
    out = bc.dnsmos_not_collapsed(frame)
    assert not out.passed
    assert said in out.description


def test_dnsmos_small_or_unscored_batches_are_not_judged_on_their_spread():
    two = bc.dnsmos_not_collapsed(scores([3.0, 3.0]))
    assert two.passed and "too few" in two.description
    none = bc.dnsmos_not_collapsed(scores([None, None, None, None]))
    assert none.passed and "not scored" in none.description
    mixed = bc.dnsmos_not_collapsed(scores([2.8, None, 3.3, 3.0]))  # resumed episodes from a run without DNSMOS
    assert mixed.passed and mixed.metadata["unscored"] == 1


# ---- published batches --------------------------------------------------------------------------------------------


KEY = "raw_audio/en/show/ep1.mp3"
SETTINGS = PublishSettings()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A release of two batches by the real writer: batch 1 (ep1 v1 with 3 segments, ep2 with 2), then batch 2,
    whose ep1 v2 (2 segments) supersedes ep1 v1 and so rewrites batch 1's shards. Tests corrupt copies of it."""
    tmp = tmp_path_factory.mktemp("published")
    store = LocalStore(tmp / "store")
    fabricate_batch(store, batch_id(1), [Ep(KEY, "v1", 1000.0, segments=3), Ep("raw_audio/en/show/ep2.mp3")])
    fabricate_batch(store, batch_id(2), [Ep(KEY, "v2", 2000.0, segments=2, freq=660.0)])
    for bid in (batch_id(1), batch_id(2)):
        publish_batch(store, bid, SETTINGS, work_dir=tmp / "work" / bid, log=lambda line: None)
    return tmp / "store"


@pytest.fixture
def release(published: Path, tmp_path: Path) -> tuple[Path, LocalStore]:
    root = tmp_path / "store"
    shutil.copytree(published, root)
    return root, LocalStore(root)


def drop_member(path: Path, member: str) -> None:
    """Rewrite a tar without one member (what a packing bug or a truncated upload would leave)."""
    with tarfile.open(path) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.name != member]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in kept:
            tar.addfile(m, io.BytesIO(data))


def test_shards_match_the_catalogue_after_publishing_and_after_supersession(release):
    _, store = release
    for bid in (batch_id(1), batch_id(2)):  # batch 1 lost ep1 v1 to batch 2: not a mismatch
        out = rc.shards_match_catalogue(store, bid, SETTINGS)
        assert out.passed, out.description
        assert out.metadata["catalogued"] == out.metadata["in_shards"] == out.metadata["indexed"] == 2


def test_a_member_deleted_from_a_shard_fails_shards_match_catalogue(release):
    root, store = release
    (tar,) = root.glob(f"shards/en/{batch_id(2)}-*.tar")
    with tarfile.open(tar) as t:
        victim = sorted(n for n in t.getnames() if n.endswith(".mp3"))[1]
    drop_member(tar, victim)
    out = rc.shards_match_catalogue(store, batch_id(2), SETTINGS)
    assert not out.passed
    assert "without both .mp3 and .json" in out.description
    drop_member(tar, victim.replace(".mp3", ".json"))  # the whole sample gone
    out = rc.shards_match_catalogue(store, batch_id(2), SETTINGS)
    assert not out.passed
    assert out.metadata["missing_from_shards"] == [victim.removesuffix(".mp3")]
    assert "missing from the shards" in out.description and "the index and the shards differ" in out.description


def test_a_catalogue_entry_the_shards_lack_fails_shards_match_catalogue(release):
    _, store = release
    key = batch_segments_key("processed/", batch_id(2))
    catalogue = read_parquet(store, key)
    extra = catalogue.head(1).with_columns(pl.lit(catalogue["id"][0][:-1] + "9").alias("id"))
    write_parquet(store, key, pl.concat([catalogue, extra]))  # catalogued after the publish: never packed
    out = rc.shards_match_catalogue(store, batch_id(2), SETTINGS)
    assert not out.passed and out.metadata["missing_from_shards"] == [extra["id"][0]]


def test_no_random_weight_release_passes_for_real_models_and_for_an_explicit_test_release(release, tmp_path):
    _, store = release
    out = rc.no_random_weight_release(store, batch_id(1), SETTINGS)
    assert out.passed and out.metadata["model_kinds"] == {"hub": 2}, out.description

    test_store = LocalStore(tmp_path / "test-release")
    fabricate_batch(test_store, batch_id(1), [Ep(KEY, models=TINY_MODELS)])
    flagged = PublishSettings(test_release=True)
    publish_batch(test_store, batch_id(1), flagged, work_dir=tmp_path / "work", log=lambda line: None)
    out = rc.no_random_weight_release(test_store, batch_id(1), flagged)
    assert out.passed and out.metadata["random_weight_samples"] == 2 and "test release" in out.description
    assert not rc.no_random_weight_release(test_store, batch_id(1), SETTINGS).passed  # the same, without the flag


def test_random_weight_provenance_without_the_flag_fails_no_random_weight_release(release):
    root, store = release
    # the provenance of what was published says random weights (as a guard that let it through would leave it)
    key = batch_segments_key("processed/", batch_id(2))
    write_parquet(store, key, read_parquet(store, key).with_columns(pl.lit("tiny").alias("model_kind")))
    out = rc.no_random_weight_release(store, batch_id(2), SETTINGS)
    assert not out.passed
    assert "2 of 2 published samples were made by random-weight models" in out.description
    assert "not a test release" in out.description
    # the index alone saying so is enough too
    path = root / index_key(batch_id(1))
    pl.read_parquet(path).with_columns(pl.lit("tiny").alias("model_kind")).write_parquet(path)
    assert not rc.no_random_weight_release(store, batch_id(1), SETTINGS).passed


def test_the_cores_read_only_the_batch_s_own_files(release):
    """Bounded reads: the checks of batch 2 never open batch 1's files."""
    _, store = release
    opened: list[str] = []
    get_bytes, get_file = store.get_bytes, store.get_file
    store.get_bytes = lambda key: opened.append(key) or get_bytes(key)
    store.get_file = lambda key, path: opened.append(key) or get_file(key, path)
    assert all(o.passed for o in rc.check_published_batch(store, batch_id(2), SETTINGS))
    assert opened and not [k for k in opened if batch_id(1) in k], opened
