"""Emilia's segmentation rules: worked examples for each rule, then invariants over random turns and VAD."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emilia_pipe.segmentation import SegmentationRules, Span, hard_split, merge_short, segment, split_turn

RULES = SegmentationRules()  # min_s=3, max_s=30, split_above_s=20, merge_gap_s=2, sample_rate=24000
EPS = 1e-6
SR = 24_000  # the rules' sample_rate: lengths are compared in whole samples, so a float length may be one off
SAMPLE = 1 / SR


def samples(start: float, end: float) -> int:
    return round(end * SR) - round(start * SR)


def spans(out: list[Span]) -> list[tuple[float, float, str]]:
    return [(s.start, s.end, s.speaker) for s in out]


# --- Rule 1: a turn up to split_above_s is kept whole, trimmed to its speech -------------------------------------


def test_short_turn_is_kept_whole_and_trimmed_to_its_speech():
    turn = Span(10.0, 25.0, "A")  # 15 s turn
    speech = [(5.0, 8.0), (11.0, 17.0), (18.0, 24.0), (30.0, 40.0)]
    assert split_turn(turn.start, turn.end, speech, RULES) == [(11.0, 24.0)]
    assert spans(segment([turn], speech)) == [(11.0, 24.0, "A")]


def test_speech_running_past_the_turn_is_clipped_to_the_turn():
    assert spans(segment([Span(10.0, 25.0, "A")], [(0.0, 100.0)])) == [(10.0, 25.0, "A")]


def test_turn_of_exactly_split_above_s_is_not_split():
    speech = [(0.0, 5.0), (15.0, 20.0)]  # a 10 s silence, but the turn is only 20 s
    assert split_turn(0.0, 20.0, speech, RULES) == [(0.0, 20.0)]


# --- Rule 2: a longer turn is split at its largest silence, recursively ------------------------------------------


def test_long_turn_is_split_at_the_largest_silence_recursively():
    # Silences: 1 s [10,11], 5.5 s [19.5,25], 1 s [33,34], 2 s [42,44]. The 50 s turn is first cut at the 5.5 s
    # silence: [0,19.5] is under 20 s, short enough; [25,50] is 25 s, so it is cut again at its largest silence.
    speech = [(0.0, 10.0), (11.0, 19.5), (25.0, 33.0), (34.0, 42.0), (44.0, 50.0)]
    assert split_turn(0.0, 50.0, speech, RULES) == [(0.0, 19.5), (25.0, 42.0), (44.0, 50.0)]
    out = segment([Span(0.0, 50.0, "A")], speech)
    assert spans(out) == [(0.0, 19.5, "A"), (25.0, 42.0, "A"), (44.0, 50.0, "A")]
    assert all(s.duration < RULES.split_above_s for s in out)


def test_long_silence_inside_a_turn_is_cut_out():
    speech = [(0.0, 15.0), (25.0, 40.0)]
    out = segment([Span(0.0, 40.0, "A")], speech)
    assert spans(out) == [(0.0, 15.0, "A"), (25.0, 40.0, "A")]
    assert not any(s.start < 25.0 and s.end > 15.0 for s in out)


def test_piece_without_silence_left_is_kept_whole_up_to_max_s():
    # Split at the 5 s silence; each side is a single speech region over split_above_s but within max_s.
    speech = [(0.0, 25.0), (30.0, 60.0)]
    assert split_turn(0.0, 60.0, speech, RULES) == [(0.0, 25.0), (30.0, 60.0)]


# --- Rule 3: anything still over max_s is hard-split into equal pieces -------------------------------------------


def test_70s_of_unbroken_speech_is_hard_split_into_three_equal_pieces():
    out = segment([Span(0.0, 70.0, "A")], [(0.0, 70.0)])
    assert len(out) == 3
    third = 70.0 / 3
    assert [(s.start, s.end) for s in out] == [
        pytest.approx((0.0, third)),
        pytest.approx((third, 2 * third)),
        pytest.approx((2 * third, 70.0)),
    ]
    assert out[0].end == out[1].start and out[1].end == out[2].start  # contiguous, nothing lost
    assert out[-1].end == 70.0
    assert all(s.duration <= RULES.max_s for s in out)
    assert all(s.speaker == "A" for s in out)


def test_hard_split():
    assert hard_split(5.0, 35.0, 30.0) == [(5.0, 35.0)]
    assert hard_split(0.0, 60.0, 30.0) == [(0.0, 30.0), (30.0, 60.0)]
    pieces = hard_split(0.0, 61.0, 30.0)
    assert len(pieces) == 3 and pieces[-1][1] == 61.0
    assert [b - a for a, b in pieces] == pytest.approx([61.0 / 3] * 3)


# --- Rule 4: short segments merge into the previous one of the same speaker, or are dropped ----------------------


def test_short_segment_merges_into_previous_segment_of_same_speaker():
    turns = [Span(0.0, 10.0, "A"), Span(11.0, 13.0, "A")]  # 2 s segment, 1 s gap
    assert spans(segment(turns, [(0.0, 10.0), (11.0, 13.0)])) == [(0.0, 13.0, "A")]


def test_merge_just_under_the_gap_limit_and_just_under_max_s():
    turns = [Span(0.0, 27.0, "A"), Span(28.99, 29.99, "A")]
    assert spans(segment(turns, [(0.0, 27.0), (28.99, 29.99)])) == [(0.0, 29.99, "A")]


def test_short_piece_split_off_a_long_turn_is_merged_back():
    # 23 s turn: split at its only silence into 20 s + 2 s; the 2 s piece folds back (gap 1 s, result 23 s).
    speech = [(0.0, 20.0), (21.0, 23.0)]
    assert split_turn(0.0, 23.0, speech, RULES) == [(0.0, 20.0), (21.0, 23.0)]
    assert spans(segment([Span(0.0, 23.0, "A")], speech)) == [(0.0, 23.0, "A")]


def test_consecutive_short_segments_chain_into_the_same_previous_segment():
    segs = [Span(0.0, 10.0, "A"), Span(10.5, 12.0, "A"), Span(12.5, 14.0, "A")]
    assert spans(merge_short(segs, RULES)) == [(0.0, 14.0, "A")]


def test_no_merge_across_a_speaker_change():
    turns = [Span(0.0, 10.0, "A"), Span(10.5, 12.5, "B")]
    assert spans(segment(turns, [(0.0, 10.0), (10.5, 12.5)])) == [(0.0, 10.0, "A")]


def test_no_merge_over_another_speakers_short_segment():
    # A's 1.5 s segment follows B's, not A's: it may not jump back over B. Both short ones are dropped.
    turns = [Span(0.0, 10.0, "A"), Span(10.2, 11.0, "B"), Span(11.2, 12.7, "A")]
    speech = [(0.0, 10.0), (10.2, 11.0), (11.2, 12.7)]
    assert spans(segment(turns, speech)) == [(0.0, 10.0, "A")]


def test_no_merge_when_gap_is_at_least_merge_gap_s():
    turns = [Span(0.0, 10.0, "A"), Span(12.0, 14.0, "A")]  # gap exactly 2 s
    assert spans(segment(turns, [(0.0, 10.0), (12.0, 14.0)])) == [(0.0, 10.0, "A")]
    turns = [Span(0.0, 10.0, "A"), Span(15.0, 17.0, "A")]
    assert spans(segment(turns, [(0.0, 10.0), (15.0, 17.0)])) == [(0.0, 10.0, "A")]


def test_no_merge_when_result_would_exceed_max_s_short_segment_dropped():
    turns = [Span(0.0, 29.0, "A"), Span(30.0, 32.0, "A")]  # merged would be 32 s > 30 s
    assert spans(segment(turns, [(0.0, 29.0), (30.0, 32.0)])) == [(0.0, 29.0, "A")]


def test_short_segments_that_cannot_merge_are_dropped():
    # The first segment has nothing before it (merging only goes backwards); a lone short turn is dropped too.
    turns = [Span(0.0, 2.0, "A"), Span(2.5, 10.0, "A"), Span(50.0, 52.9, "B")]
    speech = [(0.0, 2.0), (2.5, 10.0), (50.0, 52.9)]
    assert spans(segment(turns, speech)) == [(2.5, 10.0, "A")]
    assert merge_short([Span(0.0, 2.999, "A")], RULES) == []
    assert merge_short([Span(0.0, 3.0, "A")], RULES) == [Span(0.0, 3.0, "A")]


def test_turn_without_speech_yields_nothing():
    assert split_turn(0.0, 10.0, [(20.0, 30.0)], RULES) == []
    assert segment([Span(0.0, 10.0, "A")], [(20.0, 30.0)]) == []
    assert segment([Span(0.0, 10.0, "A")], []) == []
    assert segment([], [(0.0, 10.0)]) == []


# --- Boundary cases, as Emilia decides them: in whole samples, first of equal silences, under 20 s, under 30 s --


def test_of_equal_largest_silences_the_first_is_split_at():
    # Two 2 s silences in a 25 s turn. At the first: [0,8] + [10,25] (15 s, kept). At the later one it would be
    # [0,21] (too long, so cut at [8,10] again) + [23,25], a 2 s piece that would then be dropped.
    speech = [(0.0, 8.0), (10.0, 21.0), (23.0, 25.0)]
    assert split_turn(0.0, 25.0, speech, RULES) == [(0.0, 8.0), (10.0, 25.0)]
    assert spans(segment([Span(0.0, 25.0, "A")], speech)) == [(0.0, 8.0, "A"), (10.0, 25.0, "A")]


def test_equal_silences_are_equal_in_samples_whatever_float_rounding_says():
    # Both silences are 0.3 s (7200 samples), but in floats 5.3 - 5.0 < 18.6 - 18.3.
    speech = [(0.0, 5.0), (5.3, 18.3), (18.6, 22.0)]
    assert 5.3 - 5.0 < 18.6 - 18.3 and samples(5.0, 5.3) == samples(18.3, 18.6) == 7200
    assert split_turn(0.0, 22.0, speech, RULES) == [(0.0, 5.0), (5.3, 22.0)]


def test_a_piece_of_exactly_split_above_s_is_split_further():
    # The 30 s turn is cut at its 5 s silence; the piece before it is exactly 20 s, which Emilia does not keep
    # (it keeps pieces under 20 s), so it is cut again at its 1 s silence.
    speech = [(0.0, 9.0), (10.0, 20.0), (25.0, 30.0)]
    assert split_turn(0.0, 30.0, speech, RULES) == [(0.0, 9.0), (10.0, 20.0), (25.0, 30.0)]
    # a hair under 20 s (one sample) stays whole; the turn itself of exactly 20 s is kept whole (Emilia's VAD
    # never sees it): see test_turn_of_exactly_split_above_s_is_not_split
    under = [(0.0, 9.0), (10.0, 20.0 - 1 / 24_000), (25.0, 30.0)]
    assert split_turn(0.0, 30.0, under, RULES) == [(0.0, 20.0 - 1 / 24_000), (25.0, 30.0)]


def test_a_piece_of_exactly_split_above_s_in_samples_is_split_though_its_float_length_is_under():
    speech = [(12.3, 21.0), (22.0, 32.3), (40.0, 50.0)]
    assert 32.3 - 12.3 < 20.0 and samples(12.3, 32.3) == 480_000
    assert split_turn(12.3, 50.0, speech, RULES) == [(12.3, 21.0), (22.0, 32.3), (40.0, 50.0)]


def test_a_merge_reaching_exactly_max_s_is_not_made():
    # Emilia merges only while the result stays under 30 s: the 2 s segment is left alone, then dropped as short.
    turns = [Span(0.0, 27.0, "A"), Span(28.0, 30.0, "A")]
    assert spans(segment(turns, [(0.0, 27.0), (28.0, 30.0)])) == [(0.0, 27.0, "A")]
    # 32.3 - 2.3 is 29.999999999999996 in floats, but exactly 30 s in samples: not merged either
    turns = [Span(2.3, 29.3, "A"), Span(30.3, 32.3, "A")]
    assert 32.3 - 2.3 < 30.0 and samples(2.3, 32.3) == 720_000
    assert spans(segment(turns, [(2.3, 29.3), (30.3, 32.3)])) == [(2.3, 29.3, "A")]


# --- Overlapping turns and the speaker-change guarantee ----------------------------------------------------------


def test_overlapping_turns_never_yield_the_same_audio_twice():
    turns = [Span(0.0, 10.0, "A"), Span(5.0, 15.0, "B")]
    assert spans(segment(turns, [(0.0, 15.0)])) == [(0.0, 10.0, "A"), (10.0, 15.0, "B")]


def test_no_merge_over_a_turn_of_another_speaker_that_vad_heard_as_silence():
    # B's short turn between A's two turns has no VAD speech, so it yields no piece; A's 1.5 s segment must still
    # not be glued onto A's previous one across B's turn.
    turns = [Span(0.0, 10.0, "A"), Span(10.3, 10.9, "B"), Span(11.2, 12.7, "A")]
    out = segment(turns, [(0.0, 10.0), (11.2, 12.7)])
    assert spans(out) == [(0.0, 10.0, "A")]
    segs = [Span(0.0, 10.0, "A"), Span(11.2, 12.7, "A")]
    assert spans(merge_short(segs, RULES, turns)) == [(0.0, 10.0, "A")]
    assert spans(merge_short(segs, RULES)) == [(0.0, 12.7, "A")]  # without turns it cannot know


def test_merge_over_a_backchannel_inside_the_speakers_own_turn_is_allowed():
    # B's "mm-hmm" falls inside A's 23 s turn (diarization overlap): that time is A's too, so no speaker change.
    turns = [Span(0.0, 23.0, "A"), Span(20.2, 20.8, "B")]
    assert spans(segment(turns, [(0.0, 20.0), (21.0, 23.0)])) == [(0.0, 23.0, "A")]


# --- Invariants over random input ---------------------------------------------------------------------------------

SPEAKERS = ["A", "B", "C", "D"]


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def turn_lists(draw, horizon: float) -> list[Span]:
    """Diarization-like turns of 1-4 speakers: sorted by start, each starting a random step after the previous one,
    so they abut, leave gaps or overlap (people talking at once)."""
    names = SPEAKERS[: draw(st.integers(1, 4))]
    steps = draw(st.lists(st.tuples(_floats(0.0, 40.0), _floats(0.05, 60.0), st.sampled_from(names)), max_size=16))
    turns, cursor = [], draw(_floats(0.0, 20.0))
    for step, length, speaker in steps:
        cursor += step
        if cursor >= horizon:
            break
        turns.append(Span(cursor, min(horizon, cursor + length), speaker))
    return turns


@st.composite
def speech_regions(draw, horizon: float) -> list[tuple[float, float]]:
    """VAD output: sorted, non-overlapping (start, end) regions separated by silences (possibly of zero length)."""
    steps = draw(st.lists(st.tuples(_floats(0.0, 8.0), _floats(0.01, 45.0)), max_size=40))
    regions, cursor = [], 0.0
    for silence, length in steps:
        start = cursor + silence
        if start >= horizon:
            break
        cursor = min(horizon, start + length)
        regions.append((start, cursor))
    return regions


def _union(regions: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(regions):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@st.composite
def conversations(draw) -> tuple[list[Span], list[tuple[float, float]]]:
    """Turns and VAD drawn together, so they line up as in real audio: each turn is a few bursts of speech with
    pauses between them; the next turn (often the same speaker again) follows after a pause or cuts in early; and
    another speaker may drop a short backchannel near the end of a turn, which VAD may miss altogether, leaving a
    diarized turn with no speech under it."""
    names = SPEAKERS[: draw(st.integers(1, 4))]
    # Short turns (one burst of a few seconds) are common: they are what merging is about.
    bursts = st.one_of(
        st.tuples(_floats(0.05, 4.0), st.just(0.0)).map(lambda b: [b]),
        st.lists(st.tuples(_floats(0.05, 25.0), _floats(0.0, 6.0)), min_size=1, max_size=5),
    )
    backchannel = st.none() | st.tuples(st.integers(1, 3), _floats(-0.5, 1.0), _floats(0.05, 1.5), st.booleans())
    pause = st.one_of(_floats(0.0, 2.0), _floats(-3.0, 4.0))  # negative: the next turn cuts in
    who_next = st.none() | st.sampled_from(names)  # None: the same speaker goes on after the pause
    utterances = draw(st.lists(st.tuples(who_next, bursts, backchannel, pause), min_size=3, max_size=16))
    turns, speech, cursor, speaker = [], [], draw(_floats(0.0, 10.0)), names[0]
    for next_speaker, parts, other, pause_after in utterances:
        speaker = next_speaker or speaker
        start = cursor
        for length, gap in parts:
            speech.append((cursor, cursor + length))
            cursor += length + gap
        end = cursor - parts[-1][1]  # the turn ends with its last burst
        turns.append(Span(start, end, speaker))
        if other is not None and len(names) > 1:
            shift, offset, length, heard = other
            who = names[(names.index(speaker) + shift) % len(names)]
            if who != speaker:
                turns.append(Span(end + offset, end + offset + length, who))
                if heard:
                    speech.append((end + offset, end + offset + length))
        cursor = max(start + 0.01, end + pause_after)
    turns = [t for t in turns if t.start >= 0.0 and t.end <= 600.0]
    return sorted(turns, key=lambda t: (t.start, t.end)), _union([r for r in speech if r[1] <= 600.0])


@st.composite
def rule_sets(draw) -> SegmentationRules:
    min_s = draw(st.floats(0.1, 10.0))
    split_above_s = min_s + draw(st.floats(0.1, 40.0))
    max_s = max(split_above_s + draw(st.floats(0.0, 40.0)), 2 * min_s)
    merge_gap_s = draw(st.floats(0.0, 5.0))
    return SegmentationRules(min_s=min_s, max_s=max_s, split_above_s=split_above_s, merge_gap_s=merge_gap_s)


@st.composite
def independent(draw) -> tuple[list[Span], list[tuple[float, float]]]:
    """Turns and VAD drawn apart, over 0-600 s: they line up only by chance."""
    horizon = draw(_floats(5.0, 600.0))  # the end of the audio; short ones pack turns densely
    return draw(turn_lists(horizon)), draw(speech_regions(horizon))


@st.composite
def inputs(draw, random_rules: bool = True):
    turns, speech = draw(st.one_of(independent(), conversations()))
    return turns, speech, draw(rule_sets()) if random_rules else RULES


def _in_speech(t: float, speech: list[tuple[float, float]]) -> bool:
    return any(s - EPS <= t <= e + EPS for s, e in speech)


def _in_turn_of(t: float, speaker: str, turns: list[Span]) -> bool:
    return any(u.speaker == speaker and u.start - EPS <= t <= u.end + EPS for u in turns)


def _uncovered(lo: float, hi: float, covers: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of [lo, hi] not covered by the union of `covers`."""
    out, cursor = [], lo
    for s, e in sorted(covers):
        if e <= cursor:
            continue
        if s >= hi:
            break
        if s > cursor:
            out.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < hi:
        out.append((cursor, hi))
    return out


def _other_speaker_only_time(seg: Span, turns: list[Span]) -> float:
    """Seconds inside `seg` that belong to another speaker's turn and to no turn of the segment's own speaker."""
    own = [(u.start, u.end) for u in turns if u.speaker == seg.speaker]
    total = 0.0
    for other in turns:
        if other.speaker == seg.speaker:
            continue
        lo, hi = max(seg.start, other.start), min(seg.end, other.end)
        if hi > lo:
            total += sum(e - s for s, e in _uncovered(lo, hi, own))
    return total


def check_invariants(turns: list[Span], speech: list[tuple[float, float]], rules: SegmentationRules) -> None:
    out = segment(turns, speech, rules)
    assert [s.start for s in out] == sorted(s.start for s in out), "not ordered by start"
    for prev, cur in zip(out, out[1:], strict=False):
        assert cur.start >= prev.end - 1e-9, f"overlap: {prev} / {cur}"
    for s in out:
        assert rules.min_s - SAMPLE <= s.duration <= rules.max_s + SAMPLE, f"duration {s.duration} out of bounds: {s}"
        assert rules.min_s * SR <= samples(s.start, s.end) <= rules.max_s * SR + 1, s
        assert s.speaker in {t.speaker for t in turns}
        # Starts and ends in the speaker's own turns, and in VAD speech (hard-split cuts fall inside one region).
        assert _in_turn_of(s.start, s.speaker, turns) and _in_turn_of(s.end, s.speaker, turns), s
        assert _in_speech(s.start, speech) and _in_speech(s.end, speech), f"{s} starts or ends in silence"
        # Never across a speaker change: no stretch of another speaker's turn that its own speaker does not share.
        assert _other_speaker_only_time(s, turns) <= EPS, f"{s} crosses a turn of another speaker"
    assert segment(turns, speech, rules) == out, "not deterministic"
    if len({(t.start, t.end) for t in turns}) == len(turns):  # no exact ties: the order turns come in is moot
        assert segment(turns[::-1], speech, rules) == out


@settings(max_examples=200, deadline=None)
@given(inputs(random_rules=False))
def test_invariants_with_default_rules(case):
    check_invariants(*case)


@settings(max_examples=200, deadline=None)
@given(inputs())
def test_invariants_with_random_rules(case):
    check_invariants(*case)


def _total(regions: list[tuple[float, float]]) -> float:
    return sum(e - s for s, e in regions)


def _clip(regions: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(s, lo), min(e, hi)) for s, e in regions if min(e, hi) > max(s, lo)]


@settings(max_examples=200, deadline=None)
@given(_floats(0.0, 600.0), _floats(0.0, 600.0), st.data())
def test_split_turn_keeps_all_speech_and_cuts_only_at_silences_or_inside_long_regions(a, b, data):
    """Rules 1-3 alone, before any merging or dropping: nothing of the turn's speech is lost, no silence is kept
    in a piece over split_above_s, and every piece is within max_s."""
    start, end = min(a, b), max(a, b)
    speech = data.draw(speech_regions(600.0))
    rules = data.draw(rule_sets())
    pieces = split_turn(start, end, speech, rules)
    inside = _clip(speech, start, end)
    assert (pieces == []) == (inside == [])
    for (_, prev_end), (cur_start, _) in zip(pieces, pieces[1:], strict=False):
        assert cur_start >= prev_end
    for lo, hi in pieces:
        assert start <= lo < hi <= end
        assert hi - lo <= rules.max_s + SAMPLE
        assert _in_speech(lo, inside) and _in_speech(hi, inside)
        if hi - lo > rules.split_above_s + SAMPLE:  # only an unbroken stretch of speech may stay this long
            assert any(s - EPS <= lo and hi <= e + EPS for s, e in inside), (lo, hi)
    kept = _total([r for lo, hi in pieces for r in _clip(inside, lo, hi)])
    assert kept == pytest.approx(_total(inside), abs=EPS)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 500.0), st.floats(0.001, 500.0), st.floats(0.5, 60.0))
def test_hard_split_pieces_are_equal_contiguous_and_within_max_s(start, length, max_s):
    end = start + length
    length = end - start  # what hard_split sees, after rounding
    pieces = hard_split(start, end, max_s)
    assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, a_end), (b_start, _) in zip(pieces, pieces[1:], strict=False):
        assert a_end == b_start
    widths = [b - a for a, b in pieces]
    assert all(w <= max_s + EPS for w in widths)
    assert max(widths) - min(widths) <= EPS
    assert len(pieces) == 1 or length > max_s


@pytest.mark.parametrize(
    "kwargs", [{"min_s": 18, "max_s": 20, "split_above_s": 19}, {"min_s": 0}, {"split_above_s": 31}, {"min_s": 25}]
)
def test_rules_that_would_drop_whole_stretches_are_refused(kwargs):
    with pytest.raises(ValueError, match="segmentation rules"):
        SegmentationRules(**kwargs)
