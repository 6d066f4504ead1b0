"""Emilia's segmentation rules as pure functions over (start, end, speaker) spans, every number configurable.

1. A speaker turn up to `split_above_s` (20 s) is kept whole (trimmed to its speech).
2. A longer turn is split at its largest silence (from VAD), recursively, until each piece is short enough; a piece
   with no silence left is kept if under `max_s`.
3. Anything still over `max_s` (30 s) is hard-split into equal pieces.
4. A segment under `min_s` (3 s) is merged into the previous segment of the same speaker when the gap is under
   `merge_gap_s` (2 s) and the result stays within `max_s`; the rest under `min_s` are dropped.
Segments never overlap, are ordered and never cross a speaker change.
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

    def __post_init__(self) -> None:
        # Hard-split pieces are at least max_s / 2 long; a larger min_s would drop every piece of a long stretch.
        if not 0 < self.min_s <= self.max_s / 2 or not self.min_s < self.split_above_s <= self.max_s:
            raise ValueError(
                f"segmentation rules need 0 < min_s <= max_s/2 and min_s < split_above_s <= max_s, got {self}"
            )


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
    """Rules 1–3 for one turn: trim to speech, split at the largest silence while too long, hard-split last."""
    inside = _speech_within(start, end, speech)
    if not inside:
        return []
    start, end = inside[0][0], inside[-1][1]
    if end - start <= rules.split_above_s or len(inside) == 1:
        return hard_split(start, end, rules.max_s)
    gaps = [(inside[i + 1][0] - inside[i][1], i) for i in range(len(inside) - 1)]
    _, i = max(gaps)  # the largest silence; ties go to the later one, which is fine
    left_end, right_start = inside[i][1], inside[i + 1][0]
    return split_turn(start, left_end, inside, rules) + split_turn(right_start, end, inside, rules)


def hard_split(start: float, end: float, max_s: float) -> list[tuple[float, float]]:
    length = end - start
    if length <= max_s:
        return [(start, end)]
    n = math.ceil(length / max_s)
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
            seg.duration < rules.min_s
            and prev is not None
            and prev.speaker == seg.speaker
            and seg.start - prev.end < rules.merge_gap_s
            and seg.end - prev.start <= rules.max_s
            and not _other_speaker_between(prev.end, seg.start, seg.speaker, turns or [])
        ):
            merged[-1] = Span(prev.start, seg.end, prev.speaker)
        else:
            merged.append(seg)
    return [s for s in merged if s.duration >= rules.min_s]


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
