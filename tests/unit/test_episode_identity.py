"""An episode is a version of an object: ids cover the content, the scan batches changed content again, stores
report ETags and offer compare-and-swap writes, and re-processing on purpose keeps the id but redoes the work."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest

from emilia_pipe.batching import (
    Batch,
    ScanLimits,
    TickRecord,
    manifest_key,
    read_manifest,
    reprocess_requests,
    request_reprocess,
    scan_tick,
)
from emilia_pipe.batching import ScanCursor as Cursor
from emilia_pipe.keys import episode_id_for_key
from emilia_store import ObjectInfo, PreconditionFailed, iter_objects
from emilia_store.layout import episode_done_key

KEY = "raw_audio/en/show/ep1.mp3"


def test_the_episode_id_covers_the_version():
    assert episode_id_for_key(KEY, "etag-a") != episode_id_for_key(KEY, "etag-b")
    assert episode_id_for_key(KEY, "etag-a") == episode_id_for_key(KEY, "etag-a")
    assert episode_id_for_key(KEY, "etag-a").startswith("ep1-")
    assert episode_id_for_key(KEY) != episode_id_for_key(KEY, "etag-a")  # a manifest without versions: key only
    assert ObjectInfo(KEY, 10, 1.5).version == "10-1.5" and ObjectInfo(KEY, 10, 1.5, "abc").version == "abc"


def test_stores_list_and_head_etags_that_change_with_the_content(any_store):
    any_store.put_bytes(KEY, b"first")
    (listed,) = list(iter_objects(any_store, "raw_audio/"))
    head = any_store.head(KEY)
    assert listed.etag and listed.etag == head.etag and head.size == 5
    time.sleep(0.01)
    any_store.put_bytes(KEY, b"second!")
    assert any_store.head(KEY).etag != head.etag
    with pytest.raises(KeyError):
        any_store.head("raw_audio/en/show/missing.mp3")


def test_compare_and_swap_writes(any_store):
    token = any_store.put_if("release/x.json", b"1", None)
    with pytest.raises(PreconditionFailed):
        any_store.put_if("release/x.json", b"2", None)  # exists already
    data, current = any_store.get_versioned("release/x.json")
    assert data == b"1"
    token2 = any_store.put_if("release/x.json", b"2", current)
    assert token2 != token
    with pytest.raises(PreconditionFailed):
        any_store.put_if("release/x.json", b"3", current)  # stale token: written by someone else since
    assert any_store.get_bytes("release/x.json") == b"2"
    with pytest.raises(PreconditionFailed):
        any_store.put_if("release/missing.json", b"1", token2)  # nothing there to match
    assert [o.key for o in iter_objects(any_store, "release/")] == ["release/x.json"], "no lock files listed"


def test_the_scan_batches_changed_content_again_as_a_new_episode(local_store):
    root = local_store.root
    for name in ("ep1", "ep2"):
        (root / f"raw_audio/en/show/{name}.mp3").parent.mkdir(parents=True, exist_ok=True)
        (root / f"raw_audio/en/show/{name}.mp3").write_bytes(b"x" * 100)
    first = scan_tick(local_store, Cursor(), "raw_audio/", ScanLimits())
    (b1,) = first.batches
    old = read_manifest(local_store, b1.batch_id).filter(pl.col("audio_key") == KEY)
    again = scan_tick(local_store, first.cursor, "raw_audio/", ScanLimits())
    assert again.batches == [], "nothing changed: nothing batched"
    (root / KEY).write_bytes(b"y" * 120)  # new content under the same key
    changed = scan_tick(local_store, again.cursor, "raw_audio/", ScanLimits())
    (b2,) = changed.batches
    new = read_manifest(local_store, b2.batch_id)
    assert new["audio_key"].to_list() == [KEY]
    assert new["episode_id"][0] != old["episode_id"][0] and new["version"][0] != old["version"][0]
    assert scan_tick(local_store, changed.cursor, "raw_audio/", ScanLimits()).batches == []


def test_tick_records_keep_etags_and_read_carries_without_versions():
    batch = Batch("b", [ObjectInfo(KEY, 3, 2.0, "e1")])
    record = TickRecord("{}", None, None, [[KEY, "e1"], "raw_audio/en/show/legacy.mp3"], [batch], "{}")
    back = TickRecord.loads(record.dumps())
    assert back.batches[0].objects == batch.objects
    old = json.dumps({"start_cursor": "{}", "start": None, "end": None, "carry": [KEY], "cursor": "{}",
                      "batches": [{"id": "b", "objects": [[KEY, 3, 2.0]]}]}).encode()
    assert TickRecord.loads(old).batches[0].objects == [ObjectInfo(KEY, 3, 2.0)]


def test_reprocessing_keeps_the_episode_and_redoes_it(local_store):
    local_store.put_bytes(KEY, b"audio")
    head = local_store.head(KEY)
    eid = episode_id_for_key(KEY, head.version)
    local_store.put_bytes(episode_done_key("processed/", eid), b"{}")
    batch = request_reprocess(local_store, [KEY], "raw_audio/", "processed/")
    manifest = read_manifest(local_store, batch.batch_id)
    assert manifest["episode_id"].to_list() == [eid], "an unchanged object keeps its episode id"
    assert not local_store.exists(episode_done_key("processed/", eid)), "its marker is gone: processed again"
    assert reprocess_requests(local_store) == [batch.batch_id] and local_store.exists(manifest_key(batch.batch_id))
    with pytest.raises(FileNotFoundError, match="raw_audio/en/show/nope.mp3"):
        request_reprocess(local_store, ["raw_audio/en/show/nope.mp3"], "raw_audio/", "processed/")
