"""The raw-audio sensor over a large store: bounded pages per tick, every object batched exactly once."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from emilia_assets.definitions import defs
from emilia_assets.partitions import episode_batches
from emilia_pipe.batching import MANIFEST_PREFIX, ScanCursor
from emilia_store import LocalStore, iter_objects
from resources.batching import BatchingResource
from resources.object_store import ObjectStoreResource
from sensors.raw_audio import raw_audio_sensor


class ListSpy:
    """Records every list call a sensor tick makes on the real LocalStore (the calls still go through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, list[str]]] = []
        real = LocalStore.list_page

        def spy(store, prefix, start_after=None, max_keys=1000, **kw):
            page = real(store, prefix, start_after, max_keys, **kw)
            self.calls.append((prefix, [o.key for o in page.objects]))
            return page

        monkeypatch.setattr(LocalStore, "list_page", spy)

    def take(self) -> list[tuple[str, list[str]]]:
        out, self.calls = self.calls, []
        return out


def make_raw_tree(root: Path, n: int) -> list[str]:
    keys = []
    for i in range(n):
        lang = "de" if i % 3 == 0 else "en"
        key = f"raw_audio/{lang}/src{i % 50:03d}/ep{i:06d}.mp3"
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (100 + i % 7))
        keys.append(key)
    # sidecars are not episodes
    (root / "raw_audio/en/src000").mkdir(parents=True, exist_ok=True)
    (root / "raw_audio/en/src000/ep000001.json").write_text("{}")
    return keys


def tick(instance, store_res, batching, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs(),
                                  resources={"store": store_res, "batching": batching})
    result = raw_audio_sensor(ctx)
    # What the daemon does with the result: register the partitions (runs are keyed by run_key).
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def manifests(store: LocalStore) -> dict[str, list[str]]:
    out = {}
    for obj in iter_objects(store, MANIFEST_PREFIX):
        frame = pl.read_parquet(store.path(obj.key))
        out[obj.key] = frame["audio_key"].to_list()
    return out


def test_ten_thousand_objects_batched_over_several_ticks_each_once(tmp_path, monkeypatch):
    store_res = ObjectStoreResource(local_root=str(tmp_path / "store"))
    store = store_res.open()
    keys = make_raw_tree(store.root, 10_000)
    batching = BatchingResource(max_episodes=200, page_size=1000, max_pages_per_tick=3)
    spy = ListSpy(monkeypatch)

    with dg.instance_for_test() as instance:
        cursor, ticks, runs = None, 0, []
        listed_this_sweep: collections.Counter[str] = collections.Counter()
        while True:
            result = tick(instance, store_res, batching, cursor)
            ticks += 1
            raw_calls = [keys_ for prefix, keys_ in spy.take() if prefix == "raw_audio/"]
            assert len(raw_calls) <= 3, "a tick listed more pages than its cap"
            for page in raw_calls:
                assert len(page) <= 1000
                listed_this_sweep.update(page)
            runs += result.run_requests
            cursor = result.cursor
            if ScanCursor.loads(cursor).sweep == 1:
                break
            assert ticks < 20
        assert ticks >= 4, "10,000 objects at 3,000 keys per tick must take several ticks"
        assert max(listed_this_sweep.values()) == 1, "a key was listed twice in one sweep"
        assert len(listed_this_sweep) == 10_001  # every object seen, sidecar included

        batches = manifests(store)
        batched = [k for ks in batches.values() for k in ks]
        assert sorted(batched) == sorted(keys), "every audio object in exactly one batch, sidecar in none"
        assert all(len(ks) <= 200 for ks in batches.values())
        assert len(runs) == len(batches) >= 50  # a tick closes its last, partial batch
        assert {r.partition_key for r in runs} == set(instance.get_dynamic_partitions(episode_batches.name))
        assert len({r.run_key for r in runs}) == len(runs)

        # A second sweep finds nothing new: the just-batched objects are recent, so this exercises the dedupe.
        late = "raw_audio/aa/late/ep-late.mp3"  # lexically *behind* everything already walked
        (store.root / late).parent.mkdir(parents=True)
        (store.root / late).write_bytes(b"late")
        new_runs = []
        while ScanCursor.loads(cursor).sweep == 1:
            result = tick(instance, store_res, batching, cursor)
            assert len([c for c in spy.take() if c[0] == "raw_audio/"]) <= 3
            new_runs += result.run_requests
            cursor = result.cursor
        assert len(new_runs) == 1
        assert manifests(store)[f"{MANIFEST_PREFIX}{new_runs[0].partition_key}.parquet"] == [late]


def test_tick_that_died_before_its_cursor_was_saved_is_retried_without_duplicates(tmp_path):
    store_res = ObjectStoreResource(local_root=str(tmp_path / "store"))
    store = store_res.open()
    make_raw_tree(store.root, 450)
    batching = BatchingResource(max_episodes=100, page_size=1000, max_pages_per_tick=1)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, definitions=defs(),
                                      resources={"store": store_res, "batching": batching})
        lost = raw_audio_sensor(ctx)  # manifests written, but the result never reached the daemon
        lost_ids = set(lost.dynamic_partitions_requests[0].partition_keys)
        assert len(lost_ids) == 5

        retry = tick(instance, store_res, batching, None)
        assert set(retry.dynamic_partitions_requests[0].partition_keys) == lost_ids  # adopted, not re-batched
        assert {r.partition_key for r in retry.run_requests} == lost_ids
        batched = [k for ks in manifests(store).values() for k in ks]
        assert len(batched) == len(set(batched)) == 450

        again = tick(instance, store_res, batching, retry.cursor)
        assert again.run_requests == [] and again.dynamic_partitions_requests == []


class StoreCounter:
    """Counts every call a sensor tick makes on the real LocalStore (the calls still go through)."""

    READS = ("list_page", "get_bytes", "exists", "get_file")

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: collections.Counter[str] = collections.Counter()
        for name in (*self.READS, "put_bytes", "put_file", "delete"):
            real = getattr(LocalStore, name)

            def counted(store, *args, _real=real, _name=name, **kwargs):
                self.calls[_name] += 1
                return _real(store, *args, **kwargs)

            monkeypatch.setattr(LocalStore, name, counted)

    def take(self) -> collections.Counter[str]:
        out, self.calls = self.calls, collections.Counter()
        return out


def count_instance_calls(instance, monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()
    for name in ("has_dynamic_partition", "get_dynamic_partitions", "get_paginated_dynamic_partitions"):
        real = getattr(instance, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(instance, name, counted)
    return calls


@pytest.mark.parametrize("n_batches", [50, 5000])
def test_store_reads_per_tick_do_not_grow_with_the_number_of_batches(tmp_path, monkeypatch, n_batches: int):
    store_res = ObjectStoreResource(local_root=str(tmp_path / "store"))
    store = store_res.open()
    keys = make_raw_tree(store.root, n_batches)
    batching = BatchingResource(max_episodes=1, page_size=500, max_pages_per_tick=2)  # one batch per episode
    # per tick: the raw pages it may list, plus a few reads of the scan's own bookkeeping (at most 6 in all here)
    bound = batching.max_pages_per_tick + 10
    counter = StoreCounter(monkeypatch)
    with dg.instance_for_test() as instance:
        instance_calls = count_instance_calls(instance, monkeypatch)
        cursor, per_tick = None, []

        def run_tick():
            nonlocal cursor
            result = tick(instance, store_res, batching, cursor)
            cursor = result.cursor
            calls = counter.take()
            per_tick.append((sum(calls[r] for r in StoreCounter.READS), calls, dict(instance_calls)))
            instance_calls.clear()
            assert per_tick[-1][0] <= bound, (len(per_tick), per_tick[-1])
            assert not per_tick[-1][2], "a tick asked the instance about partitions"

        while ScanCursor.loads(cursor).sweep == 0:
            run_tick()
        assert len(manifests(store)) == n_batches
        late = [f"raw_audio/aa/late/ep{i}.mp3" for i in range(3)]  # behind everything walked
        for k in late:
            (store.root / k).parent.mkdir(parents=True, exist_ok=True)
            (store.root / k).write_bytes(b"late")
        counter.take()  # the test's own listing of the manifests above
        while ScanCursor.loads(cursor).sweep == 1:  # every key of sweep 0 is recent: all of them are deduped
            run_tick()
        batched = [k for ks in manifests(store).values() for k in ks]
        assert sorted(batched) == sorted(keys + late)
        assert max(reads for reads, _, _ in per_tick) <= bound


def test_tick_that_died_mid_sweep_is_replayed(tmp_path):
    store_res = ObjectStoreResource(local_root=str(tmp_path / "store"))
    store = store_res.open()
    keys = make_raw_tree(store.root, 450)
    batching = BatchingResource(max_episodes=40, page_size=100, max_pages_per_tick=1)
    with dg.instance_for_test() as instance:
        first = tick(instance, store_res, batching, None)
        ctx = dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs(),
                                      resources={"store": store_res, "batching": batching})
        lost = raw_audio_sensor(ctx)  # the second tick: manifests written, result lost
        lost_ids = set(lost.dynamic_partitions_requests[0].partition_keys)
        # and it died before its last manifest reached the store
        last = sorted(lost_ids)[-1]
        store.delete(f"{MANIFEST_PREFIX}{last}.parquet")

        retry = tick(instance, store_res, batching, first.cursor)
        assert {r.partition_key for r in retry.run_requests} == lost_ids
        assert retry.cursor == lost.cursor
        assert store.exists(f"{MANIFEST_PREFIX}{last}.parquet")
        cursor = retry.cursor
        while ScanCursor.loads(cursor).sweep < 2:
            cursor = tick(instance, store_res, batching, cursor).cursor
        batched = [k for ks in manifests(store).values() for k in ks]
        assert sorted(batched) == sorted(keys)


def test_cursor_from_before_tick_records_makes_no_duplicates(tmp_path):
    """A cursor saved by the scan before tick records existed: the sweep in progress and the next one have no
    records for what was batched before the upgrade, so they also dedupe against the manifests, as the scan did."""
    store_res = ObjectStoreResource(local_root=str(tmp_path / "store"))
    store = store_res.open()
    keys = make_raw_tree(store.root, 450)
    batching = BatchingResource(max_episodes=40, page_size=100, max_pages_per_tick=1)
    with dg.instance_for_test() as instance:
        cursor = tick(instance, store_res, batching, None).cursor
        cursor = tick(instance, store_res, batching, cursor).cursor
        # as the previous version left it: no tick records, a cursor without their fields
        for obj in list(iter_objects(store, "manifests/scan/")):
            store.delete(obj.key)
        old = {k: v for k, v in json.loads(cursor).items() if k in ("sweep", "sweep_started", "since", "after")}
        cursor = json.dumps(old)
        while ScanCursor.loads(cursor).sweep < 3:
            cursor = tick(instance, store_res, batching, cursor).cursor
        assert ScanCursor.loads(cursor).legacy_sweeps == 0
        batched = [k for ks in manifests(store).values() for k in ks]
        assert sorted(batched) == sorted(keys)
