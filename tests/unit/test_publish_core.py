"""emilia_publish without Dagster: publish filters, the release index and the dataset card."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from matplotlib.image import imread

from emilia_pipe.catalogue import SEGMENT_SCHEMA
from emilia_pipe.shards import Sample, write_shard
from emilia_publish.card import FIGURE_PATH, SAMPLE_FIELDS, hours_per_language, render_card, size_category
from emilia_publish.filters import FILTER_NAMES, PublishFilters, apply_filters
from emilia_publish.index import (
    CHECKSUM_SCHEMA,
    INDEX_SCHEMA,
    checksums_from_parquet,
    checksums_to_parquet,
    concat_indexes,
    index_frame,
    index_from_parquet,
    index_to_parquet,
    shard_checksums,
)


def seg(id: str, *, episode: str = "ep", duration: float = 6.0, text: str | None = "hello there friend",
        dnsmos: float | None = 3.2, lang_p: float | None = 0.99, language: str = "en") -> dict:
    return {"id": id, "episode_id": episode, "batch_id": "B1", "source": "show", "language": language,
            "speaker": f"{episode}_S00", "start": 0.0, "end": duration, "duration": duration, "text": text,
            "language_probability": lang_p, "dnsmos_sig": dnsmos, "dnsmos_bak": dnsmos, "dnsmos_ovrl": dnsmos,
            "mp3_key": f"processed/{language}/{episode}/{id}.mp3"}


def catalogue(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SEGMENT_SCHEMA)


MIXED = catalogue([
    seg("ok"),
    seg("low_mos", dnsmos=2.1),
    seg("no_mos", dnsmos=None),
    seg("short", duration=1.5),
    seg("long", duration=42.0),
    seg("unsure", lang_p=0.4),
    seg("no_lang_p", lang_p=None),
    seg("no_text", text=None),
])


# --- filters ---------------------------------------------------------------------------------------------------


def test_default_filters_keep_every_segment():
    kept, counts = apply_filters(MIXED, PublishFilters())
    assert kept.equals(MIXED)
    assert counts == dict.fromkeys(FILTER_NAMES, 0)
    assert list(counts) == ["min_dnsmos_ovrl", "min_duration_s", "max_duration_s", "min_language_probability",
                            "cps_iqr_fence"]
    assert PublishFilters().active() == {} and PublishFilters().describe() == []


@pytest.mark.parametrize(
    ("filters", "name", "dropped"),
    [
        (PublishFilters(min_dnsmos_ovrl=3.0), "min_dnsmos_ovrl", {"low_mos", "no_mos"}),
        (PublishFilters(min_duration_s=3.0), "min_duration_s", {"short"}),
        (PublishFilters(max_duration_s=30.0), "max_duration_s", {"long"}),
        (PublishFilters(min_language_probability=0.8), "min_language_probability", {"unsure", "no_lang_p"}),
    ],
)
def test_each_filter_drops_what_it_should(filters, name, dropped):
    kept, counts = apply_filters(MIXED, filters)
    assert set(MIXED["id"]) - set(kept["id"]) == dropped
    assert counts == {**dict.fromkeys(FILTER_NAMES, 0), name: len(dropped)}
    assert kept.columns == MIXED.columns and kept["id"].to_list() == [i for i in MIXED["id"] if i not in dropped]
    assert list(filters.active()) == [name] and len(filters.describe()) == 1


def test_thresholds_are_inclusive():
    df = catalogue([seg("edge", duration=3.0, dnsmos=3.0, lang_p=0.8)])
    kept, _ = apply_filters(df, PublishFilters(min_dnsmos_ovrl=3.0, min_duration_s=3.0, max_duration_s=3.0,
                                               min_language_probability=0.8))
    assert kept.height == 1


def test_counts_sum_to_the_dropped_and_the_first_filter_wins():
    df = catalogue([*MIXED.iter_rows(named=True), seg("low_mos_and_short", dnsmos=1.5, duration=1.0)])
    f = PublishFilters(min_dnsmos_ovrl=3.0, min_duration_s=3.0, max_duration_s=30.0, min_language_probability=0.8,
                       cps_iqr_fence=True)
    kept, counts = apply_filters(df, f)
    assert sum(counts.values()) == df.height - kept.height
    assert counts["min_dnsmos_ovrl"] == 3  # low_mos, no_mos and low_mos_and_short (which min_duration_s would drop)
    assert counts["min_duration_s"] == 1 and counts["max_duration_s"] == 1
    assert counts["min_language_probability"] == 2
    assert set(kept["id"]) <= {"ok", "no_text"}


def test_filters_on_an_empty_catalogue():
    kept, counts = apply_filters(catalogue([]), PublishFilters(min_dnsmos_ovrl=3.0, cps_iqr_fence=True))
    assert kept.is_empty() and kept.schema == pl.Schema(SEGMENT_SCHEMA) and sum(counts.values()) == 0


def test_contradictory_duration_bounds_are_refused():
    with pytest.raises(ValueError, match="min_duration_s"):
        PublishFilters(min_duration_s=10.0, max_duration_s=5.0)
    with pytest.raises(ValueError, match="cps_iqr_k"):
        PublishFilters(cps_iqr_fence=True, cps_iqr_k=-1.0)


def _emilia_chars(text: str) -> int:
    return len(re.sub(r"[,.!?\"'，。！？“”‘’ ]", "", text))


def test_iqr_fence_on_a_crafted_episode():
    # Episode A: eight segments at ~12-14 characters per second, one gabbled (60 cps), one dragged (2 cps), one with
    # only punctuation (no characters: Emilia rates it 0 s/char, below the fence). Episode B speaks slowly
    # throughout: its 2 cps segments are its norm, so the fence (per episode) keeps them.
    def words(n: int) -> str:  # 5n characters once spaces and punctuation are removed
        return " ".join(["Hello,"] * n)[:-1] + "."

    normal = [12, 12, 13, 13, 13, 14, 14, 15]  # 12-15 characters per second
    a = [seg(f"a{i}", episode="A", duration=5.0, text=words(n)) for i, n in enumerate(normal)]
    a += [seg("a_fast", episode="A", duration=1.0, text=words(12)),
          seg("a_slow", episode="A", duration=30.0, text=words(12)),
          seg("a_punct", episode="A", duration=4.0, text="... !? ,")]
    b = [seg(f"b{i}", episode="B", duration=30.0 + i, text=words(12)) for i in range(5)]
    df = catalogue(a + b)

    # What Emilia's calculate_audio_stats computes, with numpy, per episode.
    expected_dropped = set()
    for rows in (a, b):
        rates = {r["id"]: (r["duration"] / _emilia_chars(r["text"]) if _emilia_chars(r["text"]) else 0.0)
                 for r in rows}
        rated = [r["duration"] / _emilia_chars(r["text"]) for r in rows if _emilia_chars(r["text"])]
        q1, q3 = np.percentile(rated, [25, 75])
        lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        expected_dropped |= {i for i, rate in rates.items() if not lo <= rate <= hi}
    assert expected_dropped == {"a_fast", "a_slow", "a_punct"}, "the crafted outliers are Emilia's outliers"

    kept, counts = apply_filters(df, PublishFilters(cps_iqr_fence=True))
    assert set(df["id"]) - set(kept["id"]) == expected_dropped
    assert counts["cps_iqr_fence"] == 3 and sum(counts.values()) == 3
    # A wide enough fence keeps everything but the no-character segment (0 s/char stays below a positive fence).
    kept_wide, _ = apply_filters(df, PublishFilters(cps_iqr_fence=True, cps_iqr_k=1000.0))
    assert set(df["id"]) - set(kept_wide["id"]) <= {"a_punct"}


def test_iqr_fence_keeps_an_episode_without_transcripts():
    df = catalogue([seg(f"s{i}", duration=3.0 + i, text="") for i in range(4)])  # ASR did not run
    kept, counts = apply_filters(df, PublishFilters(cps_iqr_fence=True))
    assert kept.height == 4 and counts["cps_iqr_fence"] == 0


# --- index -----------------------------------------------------------------------------------------------------


def sample_json(id: str, language: str = "en", duration: float = 5.0, dnsmos: float | None = 3.0) -> dict:
    """The shape `sample_meta` writes into each `<key>.json`."""
    episode = id.rsplit("_", 1)[0]
    return {"id": id, "wav": f"{id}.mp3", "text": f"text of {id}", "duration": duration, "speaker": f"{episode}_S00",
            "language": language, "dnsmos": dnsmos, "start": 0.0, "end": duration, "episode_id": episode,
            "source": "show", "dnsmos_sig": dnsmos, "dnsmos_bak": dnsmos, "dnsmos_ovrl": dnsmos,
            "language_probability": None}


def test_index_frame_from_sample_json():
    samples = [sample_json("ep2_000000"), sample_json("ep1_000001", dnsmos=None), sample_json("ep1_000000")]
    first, second = "shards/en/20261127T0000Z-ab-00000.tar", "shards/en/20261127T0000Z-ab-00001.tar"
    shard_of = {"ep1_000000": first, "ep1_000001": first, "ep2_000000": second}
    index = index_frame(samples, shard_of)
    assert index.schema == pl.Schema(INDEX_SCHEMA)
    assert index["key"].to_list() == ["ep1_000000", "ep1_000001", "ep2_000000"]  # (shard, key) order
    assert set(index["batch_id"]) == {"20261127T0000Z-ab"}  # from the shard's name
    assert index.filter(pl.col("key") == "ep1_000001")["dnsmos"].to_list() == [None]
    assert index["text"][0] == "text of ep1_000000"
    assert index_frame(samples, shard_of, batch_id="given")["batch_id"].unique().to_list() == ["given"]
    own = [{**s, "batch_id": "own"} for s in samples]  # sample_meta writes it: the sample's own wins
    assert index_frame(own, shard_of, batch_id="given")["batch_id"].unique().to_list() == ["own"]
    # catalogue rows work too: dnsmos from dnsmos_ovrl, batch_id from the row
    rows = catalogue([seg("ep_000000", dnsmos=4.0)]).to_dicts()
    from_catalogue = index_frame(rows, {"ep_000000": "shards/en/x-00000.tar"})
    assert from_catalogue.row(0, named=True) == {
        "key": "ep_000000", "shard": "shards/en/x-00000.tar", "language": "en", "duration": 6.0,
        "speaker": "ep_S00", "dnsmos": 4.0, "text": "hello there friend", "episode_id": "ep", "source": "show",
        "batch_id": "B1", "audio_key": None, "episode_version": None, "license": None, "model_set": None,
        "model_kind": None, "code_version": None}


def test_index_frame_refuses_unsharded_and_duplicate_samples():
    with pytest.raises(KeyError, match="no shard"):
        index_frame([sample_json("a_000000")], {})
    with pytest.raises(ValueError, match="twice"):
        index_frame([sample_json("a_000000")] * 2, {"a_000000": "s-00000.tar"})
    one = index_frame([sample_json("a_000000")], {"a_000000": "s-00000.tar"})
    with pytest.raises(ValueError, match="more than one index"):
        concat_indexes([one, one])
    assert concat_indexes([]).schema == pl.Schema(INDEX_SCHEMA)


def test_index_parquet_round_trip_is_deterministic():
    samples = [sample_json(f"ep_{i:06d}", duration=3.0 + i) for i in range(5)]
    index = index_frame(samples, {s["id"]: "shards/en/b-00000.tar" for s in samples})
    data = index_to_parquet(index)
    assert data[:4] == b"PAR1" and data == index_to_parquet(index)
    assert index_from_parquet(data).equals(index)
    empty = index_frame([], {})
    assert index_from_parquet(index_to_parquet(empty)).schema == pl.Schema(INDEX_SCHEMA)
    with pytest.raises(ValueError, match="lacks columns"):
        index_from_parquet(_parquet(pl.DataFrame({"key": ["x"]})))


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def test_shard_checksums(tmp_path: Path):
    paths = {}
    for n, keys in enumerate([["a_000000", "a_000001", "a_000002"], ["b_000000"]]):
        path = tmp_path / f"B-{n:05d}.tar"
        write_shard(path, iter(Sample(k, b"ID3" + k.encode() * 50, sample_json(k)) for k in keys))
        paths[f"shards/en/B-{n:05d}.tar"] = path
    table = shard_checksums(paths)
    assert table.schema == pl.Schema(CHECKSUM_SCHEMA)
    assert table["shard"].to_list() == ["shards/en/B-00000.tar", "shards/en/B-00001.tar"]
    assert table["samples"].to_list() == [3, 1]
    assert table["bytes"].to_list() == [p.stat().st_size for p in paths.values()]
    assert table["sha256"].to_list() == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()]
    assert checksums_from_parquet(checksums_to_parquet(table)).equals(table)


# --- card ------------------------------------------------------------------------------------------------------


def release_index() -> pl.DataFrame:
    """1.5 h of English over 3 episodes, 0.25 h of Chinese, 0.1 h undetermined; some DNSMOS missing."""
    rng = np.random.default_rng(7)
    samples, shard_of = [], {}
    for language, hours, episodes in (("en", 1.5, 3), ("zh", 0.25, 1), ("und", 0.1, 1)):
        durations = rng.uniform(3.0, 30.0, size=400)
        durations = durations[np.cumsum(durations) < hours * 3600]
        durations = np.append(durations, hours * 3600 - durations.sum())  # exact total
        for i, d in enumerate(durations):
            key = f"{language}{i % episodes}_{i:06d}"
            mos = None if i % 10 == 0 else float(np.clip(rng.normal(3.2, 0.4), 1.0, 5.0))
            samples.append(sample_json(key, language=language, duration=float(d), dnsmos=mos))
            shard_of[key] = f"shards/{language}/20261127T0000Z-ab-{i // 50:05d}.tar"
    return index_frame(samples, shard_of)


SOURCES = [{"name": "show", "url": "https://example.org/feed.xml", "license": "cc-by-4.0"},
           {"name": "talk", "url": "https://example.org/talk.xml", "license": "cc-by-sa-4.0"}]


def header(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_card_header_is_what_the_hub_reads():
    index = release_index()
    card, _ = render_card(index, repo_id="org/emilia-forge", sources=SOURCES)
    meta = header(card)
    assert meta["license"] == "cc-by-nc-4.0"
    assert meta["language"] == ["en", "zh"]  # `und` is not a language tag, but still a config
    assert meta["pretty_name"] == "Emilia Forge"
    assert meta["task_categories"] == ["text-to-speech", "automatic-speech-recognition"]
    assert meta["size_categories"] == [size_category(index.height)] == ["n<1K"]
    assert "webdataset" in meta["tags"]
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert list(configs) == ["default", "en", "und", "zh", "parquet", "parquet-en", "parquet-und", "parquet-zh"]
    assert configs["default"] == [{"split": "train", "path": "data/*/*.tar"}]
    assert configs["parquet"] == [{"split": "train", "path": "data/*/*.parquet"}]
    for lang in ("en", "und", "zh"):
        assert configs[lang] == [{"split": "train", "path": f"data/{lang}/*.tar"}]
        assert configs[f"parquet-{lang}"] == [{"split": "train", "path": f"data/{lang}/*.parquet"}]
    custom, _ = render_card(index, repo_id="o/r", license="cc-by-4.0", pretty_name="Forge: test")
    assert header(custom)["license"] == "cc-by-4.0" and header(custom)["pretty_name"] == "Forge: test"


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 250_000, 3_000_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "n>1B"]


def test_card_hours_and_segments_per_language_match_the_index():
    index = release_index()
    card, _ = render_card(index, repo_id="org/emilia-forge")
    rows = {m[1]: (int(m[2]), float(m[3])) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| (\d+) \| ([\d.]+) \|",
                                                                card, re.M)}
    assert set(rows) == {"en", "zh", "und"}
    for lang, hours in hours_per_language(index).items():
        segments = index.filter(pl.col("language") == lang).height
        assert rows[lang] == (segments, round(hours, 3))
    assert rows["en"][1] == 1.5 and rows["zh"][1] == 0.25 and rows["und"][1] == 0.1
    total = re.search(r"^\| \*\*all\*\* \| \| (\d+) \| ([\d.]+) \|", card, re.M)
    assert (int(total[1]), float(total[2])) == (index.height, 1.85)
    assert f"{index['speaker'].n_unique()} speaker labels" in card


def test_card_body_documents_fields_loading_sources_and_dnsmos():
    index = release_index()
    card, _ = render_card(index, repo_id="org/emilia-forge", sources=SOURCES,
                          filters=PublishFilters(min_duration_s=3.0, cps_iqr_fence=True), index_path="index.parquet")
    assert "never used to drop a sample unless the publish filters say so" in card
    assert "- shorter than 3 s" in card and "IQR" in card
    for name in SAMPLE_FIELDS:
        assert f"| `{name}` |" in card and f'"{name}": Value(' in card
    assert "wds.WebDataset(" in card and 'load_dataset("org/emilia-forge", "en"' in card
    assert 'Value("binary")' in card and "hf://datasets/org/emilia-forge/index.parquet" in card
    snippets = re.findall(r"^```python\n(.*?)^```$", card, re.M | re.S)
    assert len(snippets) == 5
    for code in snippets:
        compile(code, "<card snippet>", "exec")  # every snippet in the card is valid Python
    assert "| show | <https://example.org/feed.xml> | cc-by-4.0 |" in card
    assert "| talk | <https://example.org/talk.xml> | cc-by-sa-4.0 | 0 | 0.000 |" in card
    assert re.search(r"^\| cc-by-4\.0 \| 1 \| \d+ \| 1\.850 \|$", card, re.M)  # every sample is from `show`
    assert f"]({FIGURE_PATH})" in card and FIGURE_PATH == "assets/distributions.png"
    # quantile tables: DNSMOS counts skip missing scores
    dnsmos_all = re.search(r"### DNSMOS OVRL.*?^\| \*\*all\*\* \| (\d+) \|", card, re.M | re.S)
    assert int(dnsmos_all[1]) == index["dnsmos"].drop_nulls().len() < index.height
    unfiltered, _ = render_card(index, repo_id="o/r", filters=PublishFilters())
    assert "applied no publish filter" in unfiltered
    no_sources, _ = render_card(index, repo_id="o/r")
    assert "licences were not recorded" in no_sources and "| show |" in no_sources


def test_card_png_is_a_real_figure():
    _, png = render_card(release_index(), repo_id="org/emilia-forge")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000
    image = imread(io.BytesIO(png), format="png")
    assert image.shape[0] >= 300 and image.shape[1] >= 800
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50  # axes, text, several coloured lines
    _, no_mos = render_card(release_index().with_columns(pl.lit(None, pl.Float64).alias("dnsmos")), repo_id="o/r")
    assert no_mos[:8] == b"\x89PNG\r\n\x1a\n" and no_mos != png


def test_card_is_deterministic_for_the_same_index():
    index = release_index()
    card, png = render_card(index, repo_id="org/emilia-forge", sources=SOURCES)
    again = render_card(index.sample(fraction=1.0, shuffle=True, seed=3), repo_id="org/emilia-forge",
                        sources=list(reversed(SOURCES)))
    assert again == (card, png)


def test_card_counts_take_the_singular_for_one_and_the_plural_otherwise():
    one = index_frame([sample_json("ep_000000", duration=3.6)], {"ep_000000": "shards/en/b-00000.tar"})
    card, _ = render_card(one, repo_id="o/r")
    assert "**1 segment, 0.001 hours, 1 language, 1 speaker, 1 episode, 1 source.**" in card
    assert "\n1 speaker label. " in card
    index = release_index()
    many, _ = render_card(index, repo_id="o/r")
    speakers = index["speaker"].n_unique()
    assert f"segments, 1.850 hours, 3 languages, {speakers} speakers, 5 episodes, 1 source.**" in many
    assert f"\n{speakers} speaker labels. " in many
    empty, _ = render_card(index_frame([], {}), repo_id="o/r")
    assert "**0 segments, 0.000 hours, 0 languages, 0 speakers, 0 episodes, 0 sources.**" in empty


def test_card_of_an_empty_index():
    card, png = render_card(index_frame([], {}), repo_id="o/r")
    meta = header(card)
    assert meta["language"] == [] and [c["config_name"] for c in meta["configs"]] == ["default", "parquet"]
    assert "**0 segments, 0.000 hours" in card and png[:4] == b"\x89PNG"
