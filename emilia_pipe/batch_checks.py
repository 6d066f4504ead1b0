"""Checks of one processed batch, computed from the batch's own files (Dagster-free; `processed_segments` reports
them as asset checks, and anyone can run them on a store).

Each check reads only what the batch wrote: its status table, its segment catalogue and, for the id check, the
`all_segments.json` of each of its finished episodes (one small file per episode). None lists the store or reads
another batch, so the cost of checking a batch does not grow with the dataset.

- `failed_episodes_under_threshold`: the failed fraction of the status table is at most the configured
  `max_failure_fraction` (the same number that fails the step); the metadata counts the failures by reason.
- `segment_ids_unique`: no segment id twice in the catalogue, nor across the episodes' `all_segments.json`
  (the id is the sample key in the shards: a duplicate would overwrite a sample or break the release's index).
- `durations_within_rules`: every segment lasts between the segmentation rules' `min_s` and `max_s`
  (`emilia_pipe.segmentation.SegmentationRules`, as the pipe was configured), give or take the millisecond to
  which `all_segments.json` rounds times.
- `dnsmos_not_collapsed`: the batch's DNSMOS scores have a spread (see `dnsmos_not_collapsed` for the rule).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from emilia_pipe.export import ALL_SEGMENTS
from emilia_pipe.segmentation import SegmentationRules
from emilia_store import ObjectStore, read_parquet
from emilia_store.layout import batch_segments_key, batch_status_key, episode_dir

FAILED_EPISODES = "failed_episodes_under_threshold"
SEGMENT_IDS_UNIQUE = "segment_ids_unique"
DURATIONS_WITHIN_RULES = "durations_within_rules"
DNSMOS_NOT_COLLAPSED = "dnsmos_not_collapsed"
BATCH_CHECKS = (FAILED_EPISODES, SEGMENT_IDS_UNIQUE, DURATIONS_WITHIN_RULES, DNSMOS_NOT_COLLAPSED)
# A failure of these keeps the batch out of the release (emilia_assets.checks says why for each); the durations check
# only warns. The Dagster layer and `emilia-forge run-batch` both read it here.
BLOCKING_BATCH_CHECKS = frozenset({FAILED_EPISODES, SEGMENT_IDS_UNIQUE, DNSMOS_NOT_COLLAPSED})

# all_segments.json (and so the catalogue) rounds start, end and duration to the millisecond.
DURATION_TOLERANCE_S = 0.001
# DNSMOS: below this many scored segments a spread says nothing; at or above it, a standard deviation under
# DNSMOS_MIN_STD (scores are written to 4 decimals, real ones spread by tenths) means the model gives one answer.
DNSMOS_MIN_SCORED = 3
DNSMOS_MIN_STD = 0.005
DNSMOS_COLUMNS = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
EXAMPLES = 10  # how many offending rows a check names in its metadata


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict: `description` says what was found in a sentence, `metadata` the counts (JSON values)."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchFiles:
    """What a processed batch wrote, as the checks read it."""

    batch_id: str
    status: pl.DataFrame
    catalogue: pl.DataFrame
    episode_segment_ids: dict[str, list[str]]  # episode id -> segment ids in its all_segments.json
    unreadable: list[str]  # all_segments.json of finished episodes that could not be read, with the reason


# ---- reading the batch's files ------------------------------------------------------------------------------------


def _read_table(store: ObjectStore, key: str, what: str) -> pl.DataFrame:
    try:
        return read_parquet(store, key)
    except KeyError:
        raise FileNotFoundError(f"{store.describe()}: the batch's {what} {key} is missing: "
                                "materialize processed_segments first") from None


def _episode_ids(store: ObjectStore, key: str) -> list[str] | str:
    """Segment ids of one all_segments.json, or why it cannot be read."""
    try:
        data = store.get_bytes(key)
    except KeyError:
        return f"{key}: missing"
    try:
        return [str(s["id"]) for s in json.loads(data)["segments"]]
    except (ValueError, TypeError, KeyError) as err:
        return f"{key}: not an all_segments.json document ({type(err).__name__}: {err})"


def read_batch_files(store: ObjectStore, processed_prefix: str, batch_id: str, threads: int = 8) -> BatchFiles:
    """The batch's status table, catalogue and the segment ids of each finished episode's all_segments.json."""
    status = _read_table(store, batch_status_key(processed_prefix, batch_id), "status table")
    catalogue = _read_table(store, batch_segments_key(processed_prefix, batch_id), "segment catalogue")
    finished = status.filter(pl.col("status").is_in(["done", "resumed"]))
    keys = {r["episode_id"]: episode_dir(processed_prefix, r["language"] or "", r["episode_id"]) + ALL_SEGMENTS
            for r in finished.iter_rows(named=True)}
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="batch-checks") as ex:
        found = dict(zip(keys, ex.map(lambda k: _episode_ids(store, k), keys.values()), strict=True))
    ids = {e: v for e, v in found.items() if isinstance(v, list)}
    unreadable = sorted(v for v in found.values() if isinstance(v, str))
    return BatchFiles(batch_id, status, catalogue, ids, unreadable)


# ---- the checks -----------------------------------------------------------------------------------------------------


def failure_reason(error: str | None, audio_key: str | None = None) -> str:
    """The kind of a recorded failure: its error without the file's key and without the detail after a colon
    ("empty file (0 bytes)", "download failed", "RuntimeError"), so failures can be counted by reason."""
    text = (error or "").strip()
    if audio_key and text.startswith(f"{audio_key}:"):
        text = text[len(audio_key) + 1:].strip()
    head = text.split(": ", 1)[0].strip()
    return head[:80] or "unknown error"


def failed_episodes_under_threshold(status: pl.DataFrame, max_failure_fraction: float) -> CheckOutcome:
    """Passes when at most `max_failure_fraction` of the batch's episodes failed (the step's own rule)."""
    total = status.height
    failed = status.filter(pl.col("status") == "failed")
    fraction = failed.height / total if total else 0.0
    reasons = Counter(failure_reason(r["error"], r["audio_key"]) for r in failed.iter_rows(named=True))
    passed = fraction <= max_failure_fraction
    verdict = "at most" if passed else "more than"
    return CheckOutcome(FAILED_EPISODES, passed, (
        f"{failed.height}/{total} episodes failed ({fraction:.1%}), {verdict} max_failure_fraction="
        f"{max_failure_fraction}"), {
        "episodes": total, "failed": failed.height, "failed_fraction": round(fraction, 4),
        "max_failure_fraction": max_failure_fraction,
        "failures_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "failures": [f"{r['episode_id']}: {r['error']}" for r in failed.head(EXAMPLES).iter_rows(named=True)],
    })


def _duplicates(ids: Iterable[str]) -> list[str]:
    return sorted(k for k, n in Counter(ids).items() if n > 1)


def segment_ids_unique(catalogue_ids: list[str], episode_segment_ids: dict[str, list[str]],
                       unreadable: list[str] = ()) -> CheckOutcome:
    """Passes when no id is twice in the catalogue nor across the episodes' all_segments.json, and each finished
    episode's all_segments.json could be read (an unread one could hide a duplicate)."""
    in_catalogue = _duplicates(catalogue_ids)
    in_episodes = _duplicates(i for ids in episode_segment_ids.values() for i in ids)
    holders = {d: sorted(e for e, ids in episode_segment_ids.items() if d in ids) for d in in_episodes[:EXAMPLES]}
    passed = not in_catalogue and not in_episodes and not unreadable
    if passed:
        text = (f"{len(catalogue_ids)} catalogued segment ids and those of {len(episode_segment_ids)} episodes' "
                f"{ALL_SEGMENTS} are unique")
    else:
        parts = []
        if in_catalogue:
            parts.append(f"{len(in_catalogue)} ids more than once in the catalogue (e.g. {in_catalogue[0]})")
        if in_episodes:
            parts.append(f"{len(in_episodes)} ids more than once across the episodes' {ALL_SEGMENTS} "
                         f"(e.g. {in_episodes[0]} in {', '.join(holders[in_episodes[0]])})")
        if unreadable:
            parts.append(f"{len(unreadable)} {ALL_SEGMENTS} unreadable (e.g. {unreadable[0]})")
        text = "; ".join(parts)
    return CheckOutcome(SEGMENT_IDS_UNIQUE, passed, text, {
        "segments": len(catalogue_ids), "episodes": len(episode_segment_ids),
        "duplicate_ids_in_catalogue": in_catalogue[:EXAMPLES], "duplicates_in_catalogue": len(in_catalogue),
        "duplicate_ids_across_episodes": holders, "duplicates_across_episodes": len(in_episodes),
        "unreadable": list(unreadable)[:EXAMPLES],
    })


def durations_within_rules(catalogue: pl.DataFrame, rules: SegmentationRules,
                           tolerance_s: float = DURATION_TOLERANCE_S) -> CheckOutcome:
    """Passes when every segment's duration is within [rules.min_s, rules.max_s] (± `tolerance_s`): the
    segmentation keeps nothing shorter than min_s and splits everything longer than max_s."""
    durations = catalogue.select("id", "duration")
    low, high = rules.min_s - tolerance_s, rules.max_s + tolerance_s
    bad = durations.filter(pl.col("duration").is_null() | pl.col("duration").is_nan()
                           | (pl.col("duration") < low) | (pl.col("duration") > high)).sort("id")
    finite = durations.filter(pl.col("duration").is_not_null() & pl.col("duration").is_not_nan())["duration"]
    shortest = float(finite.min()) if finite.len() else None
    longest = float(finite.max()) if finite.len() else None
    passed = bad.is_empty()
    if passed:
        text = f"all {durations.height} segments last {rules.min_s}-{rules.max_s} s"
        if finite.len():
            text += f" ({shortest:.3f}-{longest:.3f} s)"
    else:
        first = bad.row(0, named=True)
        text = (f"{bad.height} of {durations.height} segments outside the rules' {rules.min_s}-{rules.max_s} s "
                f"(e.g. {first['id']}: {first['duration']} s)")
    return CheckOutcome(DURATIONS_WITHIN_RULES, passed, text, {
        "segments": durations.height, "min_s": rules.min_s, "max_s": rules.max_s, "tolerance_s": tolerance_s,
        "shortest_s": shortest, "longest_s": longest, "outside": bad.height,
        "examples": {r["id"]: r["duration"] for r in bad.head(EXAMPLES).iter_rows(named=True)},
    })


def _spread(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    ordered = sorted(values)
    return {"scored": n, "mean": round(mean, 4), "std": round(std, 5), "min": ordered[0],
            "median": ordered[n // 2], "max": ordered[-1], "distinct": len(set(values))}


def dnsmos_not_collapsed(catalogue: pl.DataFrame, min_scored: int = DNSMOS_MIN_SCORED,
                         min_std: float = DNSMOS_MIN_STD) -> CheckOutcome:
    """Passes unless the batch's DNSMOS scores look like a broken model's. The rule, per column (OVRL, SIG, BAK):

    - a NaN or infinite score fails at once: DNSMOS gives a finite score to any clip it can read;
    - null scores are segments DNSMOS did not score (the stage was off): counted, never a failure; a batch with no
      score at all passes with "not scored";
    - with fewer than `min_scored` scores the spread is not judged (two clips may honestly agree);
    - otherwise the scores fail when their standard deviation is under `min_std` (all equal is the usual case):
      real DNSMOS spreads segments by tenths of a point, and a collapsed model gives every clip the same answer.
    Robust for small batches: it needs only three scores, and it uses no percentile or outlier rule whose
    meaning depends on the batch's size."""
    columns = [c for c in DNSMOS_COLUMNS if c in catalogue.columns]
    stats: dict[str, Any] = {}
    problems: list[str] = []
    unscored = 0
    for column in columns:
        raw = catalogue[column].to_list()
        present = [float(v) for v in raw if v is not None]
        unscored = max(unscored, len(raw) - len(present))
        broken = [v for v in present if not math.isfinite(v)]
        finite = [v for v in present if math.isfinite(v)]
        stat = _spread(finite) if finite else {"scored": 0}
        stat["non_finite"] = len(broken)
        stats[column] = stat
        if broken:
            problems.append(f"{column}: {len(broken)} NaN or infinite scores")
        elif len(finite) >= min_scored and stat["std"] < min_std:
            problems.append(f"{column}: {len(finite)} scores with std {stat['std']} < {min_std} "
                            f"({stat['distinct']} distinct, from {stat['min']} to {stat['max']})")
    scored = max((s["scored"] + s["non_finite"] for s in stats.values()), default=0)
    if problems:
        text = "DNSMOS looks collapsed (a broken model?): " + "; ".join(problems)
    elif scored == 0:
        text = f"not scored: none of {catalogue.height} segments has a DNSMOS score (the stage did not run)"
    elif scored < min_scored:
        text = f"only {scored} scored segments: too few to judge a spread (at least {min_scored})"
    else:
        ovrl = stats.get("dnsmos_ovrl", {})
        text = f"{scored} scored segments, OVRL mean {ovrl.get('mean')} std {ovrl.get('std')}"
    return CheckOutcome(DNSMOS_NOT_COLLAPSED, not problems, text, {
        "segments": catalogue.height, "unscored": unscored, "min_scored": min_scored, "min_std": min_std,
        **{c.removeprefix("dnsmos_"): s for c, s in stats.items()},
    })


def check_batch(files: BatchFiles, rules: SegmentationRules, max_failure_fraction: float) -> list[CheckOutcome]:
    """Every check of the batch, in `BATCH_CHECKS` order."""
    return [
        failed_episodes_under_threshold(files.status, max_failure_fraction),
        segment_ids_unique(files.catalogue["id"].to_list(), files.episode_segment_ids, files.unreadable),
        durations_within_rules(files.catalogue, rules),
        dnsmos_not_collapsed(files.catalogue),
    ]
