"""Publish-time filters over the segment catalogue: every one is off by default.

The pipe keeps every segment it can cut and records its quality (DNSMOS, language probability, duration); what to
drop is a publishing decision, taken here and reported per filter, so a release can say exactly what it left out
and why. With the defaults, nothing is dropped: DNSMOS is recorded, never used to drop a sample, unless asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import polars as pl

# Emilia's `get_char_count` (Amphion preprocessors/Emilia/utils/tool.py) strips exactly these before counting:
# ASCII and CJK sentence punctuation, quotes and the ASCII space. Kept identical so the fence matches theirs.
EMILIA_STRIPPED_CHARS = r"[,.!?\"'，。！？“”‘’ ]"


@dataclass(frozen=True)
class PublishFilters:
    """Which segments a release leaves out. `None` / `False` switch a filter off; all are off by default.

    A segment whose value is missing (null DNSMOS because the stage did not run, null language probability) fails
    a threshold that is switched on: a release that asks for DNSMOS >= 3 must not ship segments never scored.
    """

    min_dnsmos_ovrl: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_language_probability: float | None = None
    # Speech-rate outliers, per episode, as Emilia: the average character duration (seconds per character, the
    # reciprocal of characters per second) outside [Q1 - k*IQR, Q3 + k*IQR] of the episode's segments.
    cps_iqr_fence: bool = False
    cps_iqr_k: float = 1.5

    def __post_init__(self) -> None:
        if self.cps_iqr_k < 0 or math.isnan(self.cps_iqr_k):
            raise ValueError(f"cps_iqr_k must be >= 0, got {self.cps_iqr_k}")
        lo, hi = self.min_duration_s, self.max_duration_s
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_duration_s {lo} > max_duration_s {hi}: every segment would be dropped")

    def active(self) -> dict[str, float | bool]:
        """The filters switched on and their settings, in the order they are applied (for metadata and the card)."""
        out: dict[str, float | bool] = {}
        for name in FILTER_NAMES:
            value = getattr(self, name)
            if value is not None and value is not False:
                out[name] = value
        if self.cps_iqr_fence:
            out["cps_iqr_k"] = self.cps_iqr_k
        return out

    def describe(self) -> list[str]:
        """One human sentence per active filter, for the dataset card."""
        text = {
            "min_dnsmos_ovrl": lambda v: f"DNSMOS OVRL below {v:g} (or not computed)",
            "min_duration_s": lambda v: f"shorter than {v:g} s",
            "max_duration_s": lambda v: f"longer than {v:g} s",
            "min_language_probability": lambda v: f"language probability below {v:g} (or not recorded)",
            "cps_iqr_fence": lambda _: (
                f"speech rate (seconds per character) outside its episode's [Q1 - {self.cps_iqr_k:g}·IQR, "
                f"Q3 + {self.cps_iqr_k:g}·IQR] fence, as Emilia"
            ),
        }
        return [text[name](getattr(self, name)) for name in FILTER_NAMES if name in self.active()]


# The order filters are applied in; a segment several filters would drop is counted under the first.
FILTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(PublishFilters) if f.name != "cps_iqr_k")


def char_count(text: pl.Expr) -> pl.Expr:
    """Emilia's character count: the text's characters after removing punctuation and spaces (null text: 0)."""
    return text.fill_null("").str.replace_all(EMILIA_STRIPPED_CHARS, "").str.len_chars()


def cps_fence_keep(k: float = 1.5, *, episode: str = "episode_id", text: str = "text",
                   duration: str = "duration") -> pl.Expr:
    """True where a segment's average character duration lies inside its episode's IQR fence (Emilia's rule).

    As in Emilia's `calculate_audio_stats`: the quartiles (linear interpolation, numpy's default) come from the
    episode's segments that have characters; a segment without characters counts as 0 s/char, so it survives
    only when the lower fence is <= 0; an episode with no characters at all has the fence [0, inf) and keeps all.
    The fence is computed over the whole episode, independent of the other filters, so every filter is a pure
    per-segment predicate and the per-filter counts do not depend on the order of evaluation.
    """
    chars = char_count(pl.col(text))
    rated = pl.when(chars > 0).then(pl.col(duration) / chars)
    rate = rated.fill_null(0.0)
    q1 = rated.quantile(0.25, interpolation="linear").over(episode)
    q3 = rated.quantile(0.75, interpolation="linear").over(episode)
    lower = (q1 - k * (q3 - q1)).fill_null(0.0)
    upper = (q3 + k * (q3 - q1)).fill_null(math.inf)
    return (rate >= lower) & (rate <= upper)


def _keep_expressions(f: PublishFilters) -> dict[str, pl.Expr]:
    """Per active filter, an expression that is True where the segment passes (null never passes)."""
    exprs: dict[str, pl.Expr] = {}
    if f.min_dnsmos_ovrl is not None:
        exprs["min_dnsmos_ovrl"] = pl.col("dnsmos_ovrl") >= f.min_dnsmos_ovrl
    if f.min_duration_s is not None:
        exprs["min_duration_s"] = pl.col("duration") >= f.min_duration_s
    if f.max_duration_s is not None:
        exprs["max_duration_s"] = pl.col("duration") <= f.max_duration_s
    if f.min_language_probability is not None:
        exprs["min_language_probability"] = pl.col("language_probability") >= f.min_language_probability
    if f.cps_iqr_fence:
        exprs["cps_iqr_fence"] = cps_fence_keep(f.cps_iqr_k)
    return {name: e.fill_null(False) for name, e in exprs.items()}


def apply_filters(segments: pl.DataFrame, f: PublishFilters) -> tuple[pl.DataFrame, dict[str, int]]:
    """The segments `f` keeps (same columns, same order) and, per filter, how many it dropped.

    The counts have one entry per filter (0 when it is off), attribute each dropped segment to the first filter in
    `FILTER_NAMES` order that drops it, and so always sum to `segments.height - kept.height`.
    """
    counts = dict.fromkeys(FILTER_NAMES, 0)
    exprs = _keep_expressions(f)
    if not exprs or segments.is_empty():
        return segments, counts
    names = list(exprs)
    first_failing = pl.lit(None, dtype=pl.String)
    for name in reversed(names):  # built inside out, so the first failing filter in order wins
        first_failing = pl.when(~pl.col(f"__keep_{name}")).then(pl.lit(name)).otherwise(first_failing)
    marked = segments.with_columns(**{f"__keep_{n}": e for n, e in exprs.items()}).with_columns(
        first_failing.alias("__dropped_by")
    )
    for name, n in marked.group_by("__dropped_by").len().drop_nulls("__dropped_by").iter_rows():
        counts[name] = int(n)
    kept = marked.filter(pl.col("__dropped_by").is_null()).select(segments.columns)
    return kept, counts
