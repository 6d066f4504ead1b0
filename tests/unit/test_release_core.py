"""emilia_publish.release without Dagster: identity and supersession, bounded reads, the writer lock, recovery,
migration of a wedged store, provenance refusals, Parquet twins of the shards."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import polars as pl
import pytest
import yaml

from emilia_publish import release as rel
from emilia_publish import summary as summ
from emilia_publish.lock import LockLost, LockTimeout, ReleaseLock
from emilia_publish.parquet import read_tar_samples
from emilia_publish.release import PublishSettings, ReleaseRefused, publish_batch, read_summary, verify_release
from emilia_store import LocalStore
from emilia_store.layout import RELEASE_LOCK_KEY, index_key
from tests.release_helpers import TINY_MODELS, CountingStore, Ep, batch_id, fabricate_batch

KEY = "raw_audio/en/show/ep1.mp3"


def publish(store, bid, tmp_path, **settings):
    return publish_batch(store, bid, PublishSettings(**settings), work_dir=tmp_path / "work" / bid,
                         log=lambda line: None)


def release_rows(root: Path) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for p in sorted((root / "index").glob("*.parquet"))
              if not p.name.endswith(".shards.parquet")]
    return pl.concat(frames) if frames else pl.DataFrame()


def tar_keys(root: Path) -> list[str]:
    return sorted(k for p in (root / "shards").rglob("*.tar") for k, _, _ in read_tar_samples(p))


# --- identity and supersession -----------------------------------------------------------------------------------


def test_a_changed_object_supersedes_its_old_version_and_publishing_goes_on(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    old, other = Ep(KEY, "v1", 1000.0, segments=3), Ep("raw_audio/en/show/ep2.mp3", "v1", 1000.0)
    new = Ep(KEY, "v2", 2000.0, segments=2, freq=660.0)
    fabricate_batch(store, batch_id(1), [old, other])
    fabricate_batch(store, batch_id(2), [new])
    publish(store, batch_id(1), tmp_path)
    out = publish(store, batch_id(2), tmp_path)

    assert [d.outcome for d in out.decisions] == ["supersedes"]
    assert out.rewritten_batches == [batch_id(1)]
    rows = release_rows(root)
    assert set(rows.filter(pl.col("audio_key") == KEY)["episode_id"]) == {new.episode_id}
    assert set(rows.filter(pl.col("audio_key") == KEY)["episode_version"]) == {"v2"}
    assert not any(k.startswith(old.episode_id) for k in tar_keys(root)), "old version's samples left the tars"
    assert rows.height == 2 + 2 and sorted(rows["key"]) == tar_keys(root)
    assert verify_release(store) == []
    summary, _ = read_summary(store)
    assert summary["counts"]["totals"]["segments"] == 4 and summary["counts"]["totals"]["episodes"] == 2

    # the old batch published again (a re-run) is older than what the release holds: left out, no error
    again = publish(store, batch_id(1), tmp_path)
    assert sorted(d.outcome for d in again.decisions) == ["replaces", "stale"]
    assert set(release_rows(root).filter(pl.col("audio_key") == KEY)["episode_id"]) == {new.episode_id}
    assert verify_release(store) == []
    # and a later batch still publishes
    fabricate_batch(store, batch_id(3), [Ep("raw_audio/en/show/ep3.mp3")])
    publish(store, batch_id(3), tmp_path)
    assert verify_release(store) == [] and release_rows(root).height == 6


def test_the_newer_version_wins_whatever_order_the_batches_are_published_in(tmp_path):
    store = LocalStore(tmp_path / "store")
    old, new = Ep(KEY, "v1", 1000.0, segments=3), Ep(KEY, "v2", 2000.0, segments=1, freq=660.0)
    fabricate_batch(store, batch_id(1), [old])
    fabricate_batch(store, batch_id(2), [new])
    publish(store, batch_id(2), tmp_path)
    out = publish(store, batch_id(1), tmp_path)
    assert [d.outcome for d in out.decisions] == ["stale"] and out.samples == 0
    assert "older than the release's episode" in out.decisions[0].describe()
    assert set(release_rows(tmp_path / "store")["episode_id"]) == {new.episode_id}
    assert verify_release(store) == []


def test_reprocessing_an_unchanged_episode_replaces_its_segments(tmp_path):
    """Re-processing on purpose: the same episode (same version) in a newer batch replaces it, no duplicate."""
    root = tmp_path / "store"
    store = LocalStore(root)
    ep = Ep(KEY, "v1", 1000.0, segments=3)
    fabricate_batch(store, batch_id(1), [ep, Ep("raw_audio/en/show/ep2.mp3")])
    publish(store, batch_id(1), tmp_path)
    fabricate_batch(store, batch_id(5), [Ep(KEY, "v1", 1000.0, segments=2, freq=880.0)])  # new rules: 2 segments
    out = publish(store, batch_id(5), tmp_path)
    assert [d.outcome for d in out.decisions] == ["supersedes"]
    rows = release_rows(root).filter(pl.col("episode_id") == ep.episode_id)
    assert rows.height == 2 and set(rows["batch_id"]) == {batch_id(5)}
    assert verify_release(store) == []


def test_an_episode_that_fails_in_a_rerun_leaves_the_release_and_the_summary(tmp_path):
    store = LocalStore(tmp_path / "store")
    eps = [Ep(KEY), Ep("raw_audio/en/show/ep2.mp3", segments=3)]
    fabricate_batch(store, batch_id(1), eps)
    publish(store, batch_id(1), tmp_path)
    fabricate_batch(store, batch_id(1), eps, failed=(KEY,))
    out = publish(store, batch_id(1), tmp_path)
    assert sorted(d.outcome for d in out.decisions) == ["replaces", "withdrawn"]
    assert verify_release(store) == []
    assert read_summary(store)[0]["counts"]["totals"]["segments"] == 3


# --- bounded work ------------------------------------------------------------------------------------------------


def test_publishing_batch_n_reads_the_same_whatever_n(tmp_path):
    """Reads (calls and bytes) of publishing the 3rd and the 30th batch of a release, through a counting store."""
    store = CountingStore(tmp_path / "store")
    counts = {}
    for n in range(1, 31):
        bid = batch_id(n)
        # the same shape every time: 3 episodes, one of which supersedes the previous batch's version of ep0
        fabricate_batch(store, bid, [Ep("raw_audio/en/show/ep0.mp3", f"v{n}", 1000.0 + n),
                                     Ep(f"raw_audio/en/show/a{n}.mp3"), Ep(f"raw_audio/en/show/b{n}.mp3")])
        store.reset()
        publish(store, bid, tmp_path)
        counts[n] = (dict(store.reads), store.read_bytes)
    calls3, bytes3 = counts[3]
    calls30, bytes30 = counts[30]
    assert calls30 == calls3, (calls3, calls30)
    assert bytes30 <= bytes3 * 1.05, (bytes3, bytes30)  # the summary's counts get a digit or two longer
    assert sum(calls30.values()) < 100
    assert verify_release(store) == []
    assert len(list((tmp_path / "store/index").glob("*.parquet"))) == 30


# --- one writer at a time --------------------------------------------------------------------------------------


def test_two_concurrent_publishes_leave_a_consistent_release(tmp_path):
    root = tmp_path / "store"
    seed = LocalStore(root)
    batches = {batch_id(1): [Ep(KEY, "v1", 1000.0, segments=3), Ep("raw_audio/en/show/x.mp3")],
               batch_id(2): [Ep(KEY, "v2", 2000.0, freq=660.0), Ep("raw_audio/en/show/y.mp3", segments=4)]}
    for bid, eps in batches.items():
        fabricate_batch(seed, bid, eps)
    errors = []
    barrier = threading.Barrier(2)

    def run(bid):
        try:
            barrier.wait()
            publish_batch(LocalStore(root), bid, PublishSettings(lock_poll_s=0.05), work_dir=tmp_path / bid,
                          log=lambda line: None)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = LocalStore(root)
    assert verify_release(store) == []
    summary, _ = read_summary(store)
    assert summary["generation"] == 2 and summary["counts"]["totals"]["segments"] == 2 + 2 + 4
    assert set(release_rows(root).filter(pl.col("audio_key") == KEY)["episode_version"]) == {"v2"}
    assert not (root / RELEASE_LOCK_KEY).exists()


def test_the_lock_waits_times_out_and_is_taken_over_when_expired(tmp_path):
    store = LocalStore(tmp_path / "store")
    clock = [1000.0]
    a = ReleaseLock(store, "a", ttl_s=60, wait_s=30, poll_s=1, log=lambda m: None, clock=lambda: clock[0],
                    sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    b = ReleaseLock(store, "b", ttl_s=60, wait_s=30, poll_s=1, log=lambda m: None, clock=lambda: clock[0],
                    sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    a.acquire()
    with pytest.raises(LockTimeout, match="locked by a"):
        b.acquire()
    clock[0] += 120  # a died: its lease runs out
    b.acquire()
    with pytest.raises(LockLost, match="taken by b"):
        a.heartbeat(force=True)
    b.release()
    assert not store.exists(RELEASE_LOCK_KEY)


def test_a_writer_that_dies_after_its_commit_is_finished_by_the_next(tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = LocalStore(root)
    fabricate_batch(store, batch_id(1), [Ep(KEY, "v1", 1000.0), Ep("raw_audio/en/show/x.mp3")])
    fabricate_batch(store, batch_id(2), [Ep(KEY, "v2", 2000.0, freq=660.0)])
    fabricate_batch(store, batch_id(3), [Ep("raw_audio/en/show/z.mp3")])
    publish(store, batch_id(1), tmp_path)
    real = rel.apply_pending

    def die(store, summary, *args, **kwargs):
        if summary.get("pending"):
            raise KeyboardInterrupt("killed right after the commit")
        return real(store, summary, *args, **kwargs)

    monkeypatch.setattr(rel, "apply_pending", die)
    with pytest.raises(KeyboardInterrupt):
        publish(store, batch_id(2), tmp_path)
    assert read_summary(store)[0]["pending"], "committed, not applied"
    monkeypatch.setattr(rel, "apply_pending", real)
    publish(store, batch_id(3), tmp_path)  # another batch's publish finishes generation 2 first
    assert verify_release(store) == []
    assert set(release_rows(root).filter(pl.col("audio_key") == KEY)["episode_version"]) == {"v2"}
    assert not list((root / "release/pending").glob("*"))


def test_a_store_wedged_by_duplicate_keys_is_rebuilt_and_publishes_again(tmp_path):
    """The state the issue describes: one episode's samples in two batch indexes and no release summary (the old
    publisher wrote the second batch's index, then failed on the duplicate, and every later run failed)."""
    root, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store = LocalStore(root)
    ep = Ep(KEY, None, 1000.0, segments=2)  # a manifest from before versions: the id of the key alone
    fabricate_batch(store, batch_id(1), [ep, Ep("raw_audio/en/show/x.mp3", None)])
    publish(store, batch_id(1), tmp_path)
    fabricate_batch(store, batch_id(2), [ep])  # the same episode again (resumed from its completion marker)
    other = LocalStore(elsewhere)
    fabricate_batch(other, batch_id(2), [ep])
    publish(other, batch_id(2), tmp_path)
    for p in elsewhere.rglob("*"):
        if p.is_file() and p.relative_to(elsewhere).parts[0] in ("shards", "index"):
            (root / p.relative_to(elsewhere)).parent.mkdir(parents=True, exist_ok=True)
            (root / p.relative_to(elsewhere)).write_bytes(p.read_bytes())
    # back to the old publisher's layout: no summary, no pointers, no Parquet twins, the old index columns, the
    # checksums of the tars beside the index
    for p in list((root / "release").rglob("*.json")) + list((root / "shards").rglob("*.parquet")):
        p.unlink()
    for p in (root / "index/shards").glob("*.parquet"):
        sums = pl.read_parquet(p).filter(pl.col("shard").str.ends_with(".tar"))
        sums.write_parquet(root / "index" / f"{p.stem}.shards.parquet")
        p.unlink()
    for p in (root / "index").glob("*.parquet"):
        if not p.name.endswith(".shards.parquet"):
            pl.read_parquet(p).select(["key", "shard", "language", "duration", "speaker", "dnsmos", "text",
                                       "episode_id", "source", "batch_id"]).write_parquet(p)
    rows = release_rows(root)
    assert rows["key"].is_duplicated().sum() == 4, "wedged: the episode's 2 samples in both indexes"

    fabricate_batch(store, batch_id(3), [Ep("raw_audio/en/show/y.mp3")])
    publish(store, batch_id(3), tmp_path)
    assert verify_release(store) == []
    rows = release_rows(root)
    assert rows["key"].is_duplicated().sum() == 0 and rows.height == 2 + 2 + 2
    assert set(rows.filter(pl.col("episode_id") == ep.episode_id)["batch_id"]) == {batch_id(2)}
    assert set(rows.filter(pl.col("episode_id") == ep.episode_id)["audio_key"]) == {KEY}, "versions filled in"
    assert len(list((root / "shards").rglob("*.parquet"))) == len(list((root / "shards").rglob("*.tar")))


# --- provenance --------------------------------------------------------------------------------------------------


def test_random_weight_output_is_refused_without_the_test_release_flag(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    fabricate_batch(store, batch_id(1), [Ep(KEY, models=TINY_MODELS)])
    with pytest.raises(ReleaseRefused, match=r"random-weight models .*test_release: true.*HF_TEST_RELEASE=1"):
        publish(store, batch_id(1), tmp_path)
    assert not (root / "shards").exists() and not (root / "release").exists(), "refused before writing anything"

    out = publish(store, batch_id(1), tmp_path, test_release=True)
    assert out.test_release
    card = (root / "card/README.md").read_text()
    assert "TEST RELEASE" in card and "test-release" in yaml.safe_load(card.split("---")[1])["tags"]
    # a real batch cannot go into a test release without the flag either
    fabricate_batch(store, batch_id(2), [Ep("raw_audio/en/show/x.mp3")])
    with pytest.raises(ReleaseRefused, match="already holds 2 segments made by random-weight models"):
        publish(store, batch_id(2), tmp_path)


def test_the_index_and_card_carry_provenance_and_licences(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    fabricate_batch(store, batch_id(1), [Ep(KEY), Ep("raw_audio/en/talk/t.mp3", license=None)])
    publish(store, batch_id(1), tmp_path)
    rows = release_rows(root)
    assert set(rows["model_kind"]) == {"hub"} and set(rows["code_version"]) == {"git:test"}
    assert set(rows.filter(pl.col("source") == "show")["license"]) == {"cc-by-4.0"}
    card = (root / "card/README.md").read_text()
    assert "| show | <https://example.org/show.xml> | cc-by-4.0 | 2 |" in card
    assert "| talk | <https://example.org/talk.xml> | not recorded | 2 |" in card
    assert "## Provenance" in card and "large-v3" in card and "`git:test`" in card


# --- Parquet ------------------------------------------------------------------------------------------------------


def test_each_tar_has_a_parquet_twin_with_the_same_samples_and_bytes(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    fabricate_batch(store, batch_id(1), [Ep(KEY, segments=5), Ep("raw_audio/de/show/d.mp3", language="de")])
    publish(store, batch_id(1), tmp_path, max_shard_bytes=40_000)
    tars = sorted((root / "shards").rglob("*.tar"))
    assert len(tars) > 2
    for tar in tars:
        twin = tar.with_suffix(".parquet")
        frame = pl.read_parquet(twin)
        samples = read_tar_samples(tar)
        assert frame["id"].to_list() == [k for k, _, _ in samples]
        assert [a["bytes"] for a in frame["audio"].to_list()] == [mp3 for _, mp3, _ in samples]
        assert [a["path"] for a in frame["audio"].to_list()] == [f"{k}.mp3" for k, _, _ in samples]
        assert frame.drop("audio").to_dicts() == [meta for _, _, meta in samples]
    import pyarrow.parquet as pq

    meta = pq.read_schema(tars[0].with_suffix(".parquet")).metadata[b"huggingface"]
    assert json.loads(meta)["info"]["features"]["audio"] == {"sampling_rate": 24000, "_type": "Audio"}
    before = {p: p.read_bytes() for p in (root / "shards").rglob("*.parquet")}
    publish(store, batch_id(1), tmp_path, max_shard_bytes=40_000)  # deterministic: the same bytes again
    assert {p: p.read_bytes() for p in (root / "shards").rglob("*.parquet")} == before
    header = yaml.safe_load((root / "card/README.md").read_text().split("---")[1])
    names = [c["config_name"] for c in header["configs"]]
    assert {"default", "en", "de", "parquet", "parquet-en", "parquet-de"} == set(names)


def test_summary_arithmetic_is_exact(tmp_path):
    store = LocalStore(tmp_path / "store")
    fabricate_batch(store, batch_id(1), [Ep(KEY, segments=4), Ep("raw_audio/en/show/x.mp3")])
    publish(store, batch_id(1), tmp_path)
    index = pl.read_parquet(io.BytesIO((tmp_path / "store" / index_key(batch_id(1))).read_bytes()))
    parts = summ.episode_contributions(index)
    total = summ.empty_counts()
    for c in parts.values():
        summ.add(total, c)
    for c in parts.values():
        summ.add(total, c, -1)
    assert total == {} or all(not v for v in total.values())
    assert summ.quantile({"300": 1, "400": 1}, 0.5) == 3.5
