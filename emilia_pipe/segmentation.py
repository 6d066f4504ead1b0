"""Emilia's segmentation rules as pure functions over (start, end, speaker) spans, every number configurable.

1. A speaker turn up to `split_above_s` (20 s) is kept whole (trimmed to its speech; dropped if it has none).
2. A longer turn is split at its largest silence (from VAD; the first of equal ones), recursively, until each piece
   is under `split_above_s`; a piece with no silence left is kept whole.
3. Anything still over `max_s` (30 s) is hard-split into equal pieces.
4. A segment under `min_s` (3 s) is merged into the previous segment of the same speaker when the gap is under
   `merge_gap_s` (2 s), the result stays under `max_s` and no other speaker's turn lies between; the rest under
   `min_s` are dropped.
Segments never overlap, are ordered and never cross a speaker change.

Durations are compared in whole samples at `sample_rate`, as Amphion's Emilia-Pipe compares its VAD's sample
counts: a boundary case (a piece of exactly 20 s, a merge reaching exactly 30 s, two equal silences) then goes the
same way whatever float rounding did to the seconds. docs/segmentation.md sets out each rule, where it matches
Amphion's Emilia-Pipe and where it deliberately differs, and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentationRules:
    min_s: float = 3.0
    max_s: float = 30.0
    split_above_s: float = 20.0
    merge_gap_s: float = 2.0
    sample_rate: int = 24_000  # the pipe's rate (emilia_pipe.audio.TARGET_SR): the grid durations are compared on

    def __post_init__(self) -> None:
        # Hard-split pieces are at least max_s / 2 long; a larger min_s would drop every piece of a long stretch.
        if not 0 < self.min_s <= self.max_s / 2 or not self.min_s < self.split_above_s <= self.max_s:
            raise ValueError(
                f"segmentation rules need 0 < min_s <= max_s/2 and min_s < split_above_s <= max_s, got {self}"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"segmentation rules need a positive sample_rate, got {self}")

    def samples(self, start: float, end: float) -> int:
        """Whole samples from `start` to `end`: what the export cuts (`round(t * sample_rate)` at both ends)."""
        return round(end * self.sample_rate) - round(start * self.sample_rate)

    def limit(self, seconds: float) -> float:
        """A rule's length in samples, to compare against `samples`."""
        return seconds * self.sample_rate


def _speech_within(start: float, end: float, speech: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for s, e in speech:
        s, e = max(s, start), min(e, end)
        if e > s:
            out.append((s, e))
    return out


def split_turn(
    start: float, end: float, speech: list[tuple[float, float]], rules: SegmentationRules
) -> list[tuple[float, float]]:
    """Rules 1–3 for one turn: trim to speech, split at the largest silence while too long, hard-split last.

    As in Emilia, the turn itself is kept whole up to *and including* `split_above_s` (Emilia runs no VAD on such a
    turn), while a stretch of speech being split is kept only *under* it.
    """
    inside = _speech_within(start, end, speech)
    if not inside:
        return []
    if rules.samples(start, end) <= rules.limit(rules.split_above_s):
        return hard_split(inside[0][0], inside[-1][1], rules.max_s, rules.sample_rate)
    return _split_speech(inside, rules)


def _split_speech(inside: list[tuple[float, float]], rules: SegmentationRules) -> list[tuple[float, float]]:
    start, end = inside[0][0], inside[-1][1]
    if len(inside) == 1 or rules.samples(start, end) < rules.limit(rules.split_above_s):
        return hard_split(start, end, rules.max_s, rules.sample_rate)
    gaps = [rules.samples(inside[i][1], inside[i + 1][0]) for i in range(len(inside) - 1)]
    i = gaps.index(max(gaps))  # the largest silence; of equal ones the first, as Emilia
    return _split_speech(inside[: i + 1], rules) + _split_speech(inside[i + 1 :], rules)


def hard_split(start: float, end: float, max_s: float, sample_rate: int | None = None) -> list[tuple[float, float]]:
    """Equal pieces of at most `max_s` (one piece when it fits), compared in whole samples when given a rate."""
    length = end - start
    if sample_rate is not None:
        units, limit = round(end * sample_rate) - round(start * sample_rate), max_s * sample_rate
    else:
        units, limit = length, max_s
    if units <= limit:
        return [(start, end)]
    n = math.ceil(units / limit)
    step = length / n
    return [(start + k * step, start + (k + 1) * step if k < n - 1 else end) for k in range(n)]


def _other_speaker_between(start: float, end: float, speaker: str, turns: list[Span]) -> bool:
    """Whether some of (start, end) lies in another speaker's turn and in no turn of `speaker`."""
    others = [t for t in turns if t.speaker != speaker and t.start < end and t.end > start]
    own = sorted((t.start, t.end) for t in turns if t.speaker == speaker) if others else []
    for other in others:
        lo, hi = max(start, other.start), min(end, other.end)
        for s, e in own:  # walk `lo` past this speaker's own turns
            if lo >= hi or s > lo:
                break
            lo = max(lo, e)
        if lo < hi:
            return True
    return False


def merge_short(segments: list[Span], rules: SegmentationRules, turns: list[Span] | None = None) -> list[Span]:
    """Rule 4: fold short segments into the previous one of the same speaker, then drop what is still short.

    With `turns`, no merge swallows another speaker's turn in the gap: a turn VAD heard no speech in leaves no
    segment between the two, yet it is still a speaker change."""
    merged: list[Span] = []
    for seg in segments:
        prev = merged[-1] if merged else None
        if (
            rules.samples(seg.start, seg.end) < rules.limit(rules.min_s)
            and prev is not None
            and prev.speaker == seg.speaker
            and rules.samples(prev.end, seg.start) < rules.limit(rules.merge_gap_s)
            and rules.samples(prev.start, seg.end) < rules.limit(rules.max_s)
            and not _other_speaker_between(prev.end, seg.start, seg.speaker, turns or [])
        ):
            merged[-1] = Span(prev.start, seg.end, prev.speaker)
        else:
            merged.append(seg)
    return [s for s in merged if rules.samples(s.start, s.end) >= rules.limit(rules.min_s)]


def segment(
    turns: list[Span], speech: list[tuple[float, float]], rules: SegmentationRules | None = None
) -> list[Span]:
    """Speaker turns (from diarization) and VAD speech regions in, final segments out."""
    rules = rules or SegmentationRules()
    pieces = [
        Span(s, e, turn.speaker)
        for turn in sorted(turns, key=lambda t: (t.start, t.end))
        for s, e in split_turn(turn.start, turn.end, speech, rules)
    ]
    # Overlapping turns (two people talking at once) would give overlapping pieces: clip each to start where the
    # previous ended, so the dataset never holds the same audio twice.
    clipped: list[Span] = []
    for p in pieces:
        if clipped and p.start < clipped[-1].end:
            p = Span(clipped[-1].end, p.end, p.speaker)
        if p.end > p.start:
            clipped.append(p)
    return merge_short(clipped, rules, turns)
