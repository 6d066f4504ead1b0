"""The release summary: everything the card needs about the whole release, in a size that does not grow with it.

Publishing batch N must not read batches 1..N-1 again. So the release keeps, instead of its sample rows, counts:
per language segments, milliseconds of audio, speakers, episodes, shards and two sparse histograms at 0.01
resolution (DNSMOS OVRL and duration, from which the card's quantiles and figure come); per source its segments,
hours, licences and URLs; per model set and code version their segments. Every count is a sum over episodes, so an
episode's *contribution* (`episode_contributions`) can be added when it enters the release and subtracted when a
newer version of its object, or a re-processing, supersedes it. Speakers add up too: diarization labels are
`<episode_id>_S<nn>`, unique to their episode.

A contribution and the summary have the same shape (nested dicts of ints, see `add`), plus `model_docs`: the model
sets' descriptions (names, revisions, checksums), kept while some segment uses them.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from emilia_pipe.batch_report import CENTI, histogram  # one histogram format for batch and release summaries

FORMAT = 1


def empty_counts() -> dict[str, Any]:
    return {"totals": {}, "languages": {}, "sources": {}, "model_sets": {}, "model_kinds": {}, "code_versions": {}}


def empty_summary() -> dict[str, Any]:
    """A release with nothing in it, at generation 0."""
    return {"format": FORMAT, "generation": 0, "counts": empty_counts(), "model_docs": {}, "pending": None,
            "hub": {"upload": [], "delete": []}, "updated": None}


def add(into: dict[str, Any], other: Mapping[str, Any], sign: int = 1) -> dict[str, Any]:
    """`into += sign * other`, for nested dicts of ints; zero counts and empty dicts are dropped, so a summary that
    gained and lost the same episode is equal (and serialises equal) to one that never had it."""
    for key, value in other.items():
        if isinstance(value, Mapping):
            sub = into.setdefault(key, {})
            add(sub, value, sign)
            if not sub:
                del into[key]
        else:
            n = into.get(key, 0) + sign * int(value)
            if n:
                into[key] = n
            else:
                into.pop(key, None)
    return into


def negative_counts(counts: Mapping[str, Any], path: str = "") -> list[str]:
    """Paths of counts below zero: a summary that subtracted something it never added (a broken release)."""
    out = []
    for key, value in counts.items():
        if isinstance(value, Mapping):
            out += negative_counts(value, f"{path}{key}.")
        elif value < 0:
            out.append(f"{path}{key}={value}")
    return out


def _count(values: Iterable[Any], default: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        k = default if v is None or v == "" else str(v)
        out[k] = out.get(k, 0) + 1
    return out


def _ms(rows: pl.DataFrame) -> int:
    """Milliseconds of audio: integer, so that adding and subtracting episodes is exact."""
    return int(sum(round((d or 0.0) * 1000) for d in rows["duration"].to_list()))


def episode_contributions(index: pl.DataFrame, urls: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per episode id, what its rows of a sample index add to the release (`add`-able counts).

    `index` has the columns of `emilia_publish.index.INDEX_SCHEMA` (the provenance and licence ones may be null);
    `urls` maps an episode id to its source's URL (from the ingest sidecar), when known.
    """
    out: dict[str, dict[str, Any]] = {}
    if index.is_empty():
        return out
    frame = index.with_columns(pl.col("language").fill_null("und"), pl.col("source").fill_null("(unknown)"))
    for (episode_id,), rows in frame.group_by(["episode_id"], maintain_order=True):
        c = empty_counts()
        c["totals"] = {"episodes": 1, "segments": rows.height, "ms": _ms(rows), "speakers": rows["speaker"].n_unique()}
        for (language,), g in rows.group_by(["language"], maintain_order=True):
            c["languages"][language] = {
                "episodes": 1, "segments": g.height, "ms": _ms(g), "speakers": g["speaker"].n_unique(),
                "dnsmos": histogram(g["dnsmos"].to_list()), "duration": histogram(g["duration"].to_list()),
            }
        for (source,), g in rows.group_by(["source"], maintain_order=True):
            licenses: dict[str, Any] = {}
            for (lic,), lg in g.with_columns(pl.col("license").fill_null("not recorded")).group_by(["license"]):
                licenses[str(lic) or "not recorded"] = {"segments": lg.height, "ms": _ms(lg)}
            entry: dict[str, Any] = {"episodes": 1, "segments": g.height, "ms": _ms(g), "licenses": licenses}
            url = (urls or {}).get(str(episode_id))
            if url:
                entry["urls"] = {url: 1}
            c["sources"][source] = entry
        c["model_sets"] = _count(rows["model_set"].to_list(), "not recorded")
        c["model_kinds"] = _count(rows["model_kind"].to_list(), "not recorded")
        c["code_versions"] = _count(rows["code_version"].to_list(), "not recorded")
        out[str(episode_id)] = add(empty_counts(), c)  # normalised: no zero counts
    return out


def summary_from_index(index: pl.DataFrame, docs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a release given as one sample index (all its rows at once): for `render_card(index)`, tests
    and the rebuild of a release; shards are counted from the index's `shard` column."""
    summary = empty_summary()
    for contribution in episode_contributions(index).values():
        add(summary["counts"], contribution)
    for (language,), g in index.with_columns(pl.col("language").fill_null("und")).group_by(["language"]):
        add(summary["counts"]["languages"], {language: {"shards": g["shard"].n_unique()}})
    used = set(summary["counts"]["model_sets"])
    summary["model_docs"] = {k: v for k, v in (docs or {}).items() if k in used}
    return summary


def prune_docs(summary: dict[str, Any]) -> None:
    """Forget model-set descriptions no segment of the release uses any more."""
    used = set(summary["counts"].get("model_sets", {}))
    summary["model_docs"] = {k: v for k, v in sorted(summary.get("model_docs", {}).items()) if k in used}


# ---- reading a summary ----------------------------------------------------------------------------------------


def histogram_values(hist: Mapping[str, int]) -> list[tuple[float, int]]:
    """(value, count) in value order, from a sparse 0.01-resolution histogram."""
    return sorted((int(k) / CENTI, n) for k, n in hist.items() if n > 0)


def merged(hists: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hists:
        add(out, h)
    return out


def quantile(hist: Mapping[str, int], q: float) -> float | None:
    """The `q` quantile with linear interpolation (numpy's default) of the values the histogram holds."""
    pairs = histogram_values(hist)
    n = sum(c for _, c in pairs)
    if not n:
        return None
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return _nth(pairs, lo) + (_nth(pairs, hi) - _nth(pairs, lo)) * (pos - lo)


def _nth(pairs: list[tuple[float, int]], i: int) -> float:
    seen = 0
    for value, c in pairs:
        seen += c
        if i < seen:
            return value
    return pairs[-1][0]


def describe(hist: Mapping[str, int], quantiles: Iterable[float]) -> dict[str, Any] | None:
    """n, mean, min, the quantiles and max of a histogram (None when it is empty)."""
    pairs = histogram_values(hist)
    n = sum(c for _, c in pairs)
    if not n:
        return None
    return {"n": n, "mean": sum(v * c for v, c in pairs) / n, "min": pairs[0][0],
            "quantiles": [quantile(hist, q) for q in quantiles], "max": pairs[-1][0]}


def dumps(summary: Mapping[str, Any]) -> bytes:
    """Canonical JSON: the same release state gives the same bytes."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise ValueError(f"{where}: the release summary is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "counts" not in doc:
        raise ValueError(f"{where}: not a release summary of format {FORMAT}")
    base = empty_summary()
    base.update(doc)
    return copy.deepcopy(base)


def is_test_release(summary: Mapping[str, Any]) -> bool:
    """The release holds output of random-weight models (`emilia-forge models tiny`)."""
    return summary["counts"].get("model_kinds", {}).get("tiny", 0) > 0
