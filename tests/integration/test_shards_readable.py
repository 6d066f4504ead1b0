"""The shards a batch produces are readable by the two loaders users will reach for: 🤗 datasets and webdataset.

`datasets`' webdataset builder decodes `.mp3` as `Audio`, which needs torchcodec (no CPU build on PyPI that works
with this torch), so the features are declared, with the audio as raw bytes, and soundfile decodes it: the recipe
the dataset card gives. The JSON's fields are declared from `card.SAMPLE_FIELDS`, and the shards must carry exactly
those: the builder silently drops undeclared fields and fills missing ones with None, so only this check keeps the
card and the sidecars in step.
"""

from __future__ import annotations

import io
import json

import dagster as dg
import polars as pl
import pytest
import soundfile as sf
import webdataset as wds

from emilia_publish.card import SAMPLE_FIELDS, render_card
from emilia_publish.index import index_frame, read_shard_samples, shard_checksums
from resources.object_store import ObjectStoreResource
from tests.integration.helpers import batch_from_sensor, materialize_batch, seed_samples


@pytest.fixture
def store(tmp_path):
    return ObjectStoreResource(local_root=str(tmp_path / "store"))


def test_a_batchs_shards_load_with_datasets_and_webdataset(store, tmp_path):
    import datasets  # a dev dependency: the test must fail, not skip, where it is missing
    from datasets import Features, Value

    root = tmp_path / "store"
    seed_samples(root, ["two_voices", "monologue"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        assert materialize_batch(instance, store, batch, max_shard_mb=0.3).success  # several shards
    segments = pl.read_parquet(root / "processed/_batches" / f"{batch}.segments.parquet")
    tars = sorted(root.glob(f"shards/*/{batch}-*.tar"))
    assert segments.height > 2 and len(tars) > 1
    urls = [str(p) for p in tars]

    # (a) datasets, with explicit features
    features = Features({
        "mp3": Value("binary"),
        "json": {name: Value(dtype) for name, (dtype, _) in SAMPLE_FIELDS.items()},
        "__key__": Value("string"),
        "__url__": Value("string"),
    })
    ds = datasets.load_dataset("webdataset", data_files={"train": urls}, features=features, split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    assert ds.num_rows == segments.height
    assert sorted(ds["__key__"]) == sorted(segments["id"].to_list())
    by_id = {r["id"]: r for r in segments.iter_rows(named=True)}
    for row in ds:
        meta, seg = row["json"], by_id[row["__key__"]]
        assert meta["id"] == row["__key__"] and meta["wav"] == f"{row['__key__']}.mp3"
        assert row["__url__"] in urls
        assert (meta["duration"], meta["speaker"], meta["episode_id"], meta["language"]) == (
            seg["duration"], seg["speaker"], seg["episode_id"], seg["language"])
        audio, rate = sf.read(io.BytesIO(row["mp3"]), dtype="float32")
        assert rate == 24_000 and audio.ndim == 1, "24 kHz mono"
        assert abs(len(audio) / rate - meta["duration"]) <= 0.1

    raw = [s for p in tars for s in read_shard_samples(p)]
    assert all(set(s) == set(SAMPLE_FIELDS) for s in raw), "sidecar fields differ from card.SAMPLE_FIELDS"

    # (b) webdataset, the same samples in the same order with the same bytes
    loaded = {r["__key__"]: r for r in ds}
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        keys.append(sample["__key__"])
        assert sample["mp3"] == loaded[sample["__key__"]]["mp3"]
        assert json.loads(sample["json"]) == loaded[sample["__key__"]]["json"]
    assert keys == ds["__key__"]

    # The index, checksums and card of these shards agree with the catalogue.
    shard_names = {f"{p.parent.name}/{p.name}": p for p in tars}
    shard_of = {s["id"]: name for name, p in shard_names.items() for s in read_shard_samples(p)}
    index = index_frame(raw, shard_of)
    assert index.height == segments.height and set(index["batch_id"]) == {batch}
    sums = shard_checksums(shard_names)
    assert sums["samples"].sum() == segments.height
    card, png = render_card(index, repo_id="org/emilia-forge")
    assert "data/en/*.tar" in card and png[:4] == b"\x89PNG"


def test_the_parquet_files_load_with_datasets_and_hold_the_webdataset_samples(store, tmp_path):
    import datasets
    import pyarrow.parquet as pq
    from datasets import Audio

    root = tmp_path / "store"
    seed_samples(root, ["two_voices", "monologue"])
    with dg.instance_for_test() as instance:
        (batch,) = batch_from_sensor(instance, store)
        assert materialize_batch(instance, store, batch, max_shard_mb=0.3).success
    tars = sorted(root.glob(f"shards/*/{batch}-*.tar"))
    parquets = sorted(root.glob(f"shards/*/{batch}-*.parquet"))
    assert len(tars) > 1 and [p.with_suffix(".tar") for p in parquets] == tars

    # as the Hub's viewer and `datasets` see them: the features come from the files themselves
    plain = datasets.load_dataset("parquet", data_files={"train": [str(p) for p in parquets]}, split="train",
                                  cache_dir=str(tmp_path / "hf_cache"))
    assert plain.features["audio"] == Audio(sampling_rate=24_000)
    assert {name: plain.features[name].dtype for name in SAMPLE_FIELDS} == {
        name: dtype for name, (dtype, _) in SAMPLE_FIELDS.items()}
    # bytes without torchcodec: the same features, the audio not decoded, as the card's snippet does
    features = plain.features.copy()
    features["audio"] = Audio(sampling_rate=24_000, decode=False)
    ds = datasets.load_dataset("parquet", data_files={"train": [str(p) for p in parquets]}, split="train",
                               features=features, cache_dir=str(tmp_path / "hf_cache2"))
    webdataset = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in tars], shardshuffle=False)}
    assert sorted(ds["id"]) == sorted(webdataset), "the same keys"
    for row in ds:
        sample = webdataset[row["id"]]
        assert row["audio"]["bytes"] == sample["mp3"], "the same bytes"
        assert row["audio"]["path"] == f"{row['id']}.mp3"
        assert {k: row[k] for k in SAMPLE_FIELDS} == json.loads(sample["json"])
        a, rate_a = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        b, rate_b = sf.read(io.BytesIO(sample["mp3"]), dtype="float32")
        assert rate_a == rate_b == 24_000 and (a == b).all(), "decode to the same audio"
    for p in parquets:
        meta = pq.ParquetFile(p).metadata
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups)), "row groups <= 100"
