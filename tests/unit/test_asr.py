"""WhisperAsr's contract on a random-weight Whisper with the real tokenizer (emilia_pipe.tiny.whisper).

The text is garbage, so these tests check what the pipe relies on: one transcript per segment in input order,
the language policy (episode / segment / forced), Emilia's keep/drop rule with a reason, and word timestamps in
episode time. Beam 1 and temperature 0 keep decoding deterministic and fast.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from emilia_pipe.asr import AsrConfig, Transcript, WhisperAsr, resolve_compute_type, resolve_device
from emilia_pipe.audio import decode
from emilia_pipe.tiny import whisper as tiny_whisper

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SR = 24_000
SEGMENTS = [(0.3, 4.5), (5.0, 9.8), (10.2, 15.0)]  # inside two_voices.mp3's first three turns


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        tiktoken = tiny_whisper.fetch_tiktoken()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"Whisper tokenizer source unavailable (pip download openai-whisper failed): {err}")
    return tiny_whisper.build(tmp_path_factory.mktemp("tiny-whisper"), tiktoken)


@pytest.fixture(scope="session")
def audio() -> np.ndarray:
    return decode(SAMPLES / "two_voices.mp3", SR)


@pytest.fixture(scope="session")
def asr(tiny_model: Path) -> WhisperAsr:
    """One loaded model for the session; tests swap `config` (as a per-run setting would) instead of reloading."""
    return WhisperAsr(_config(tiny_model))


@pytest.fixture
def run(asr: WhisperAsr, audio: np.ndarray) -> Iterator[Callable[..., list[Transcript]]]:
    """Transcribe with config tweaks on top of the test defaults; the shared model's config is restored after."""
    default = asr.config

    def go(segments: list[tuple[float, float]] = SEGMENTS, **changes) -> list[Transcript]:
        asr.config = replace(default, **changes)
        return asr.transcribe(audio, SR, segments)

    yield go
    asr.config = default


def _config(model: Path, **changes) -> AsrConfig:
    # A random model's language guess is near-uniform (p ~ 0.01): accept every language it has and any probability,
    # so "kept" is the default here and each rejection test switches exactly one rule on.
    base = AsrConfig(
        model=str(model), device="cpu", beam_size=1, temperature=0.0,
        supported_languages=tiny_whisper.LANGUAGES, min_language_probability=0.0,
    )
    return replace(base, **changes)


def _assert_contract(results: list[Transcript], n: int) -> None:
    assert len(results) == n
    for t in results:
        assert isinstance(t, Transcript)
        assert isinstance(t.text, str)
        assert t.language in tiny_whisper.LANGUAGES
        assert 0.0 <= t.language_probability <= 1.0


def test_tiny_model_has_whisper_vocabulary(tiny_model: Path, asr: WhisperAsr) -> None:
    assert asr.multilingual
    assert asr.languages == tiny_whisper.LANGUAGES
    tok = asr.model.hf_tokenizer
    assert tok.get_vocab_size() == tiny_whisper.VOCAB_SIZE
    assert tok.token_to_id("<|endoftext|>") == 50257 and tok.token_to_id("<|notimestamps|>") == 50363
    assert tok.decode(tok.encode("Hello world", add_special_tokens=False).ids) == "Hello world"


def test_one_transcript_per_segment_in_order(run) -> None:
    results = run()
    _assert_contract(results, len(SEGMENTS))
    assert all(t.keep and t.reason is None and t.words is None for t in results)
    assert len({t.language for t in results}) == 1  # detected once for the episode


def test_order_follows_input_not_time(run) -> None:
    # Forced language makes each segment's (garbage) text differ, so a swap would show.
    forward = [t.text for t in run(language="en")]
    assert len(set(forward)) == len(SEGMENTS)
    backward = [t.text for t in run(list(reversed(SEGMENTS)), language="en")]
    assert backward == list(reversed(forward))


def test_forced_language_is_honoured_without_detection(run, asr: WhisperAsr, monkeypatch) -> None:
    def no_detection(*args, **kwargs):
        raise AssertionError("detection must be skipped when the language is forced")

    monkeypatch.setattr(asr.model, "detect_language", no_detection)
    results = run(language="de")
    _assert_contract(results, len(SEGMENTS))
    assert [(t.language, t.language_probability, t.keep) for t in results] == [("de", 1.0, True)] * len(SEGMENTS)


class _CountingCt2:
    """Stands in for the CTranslate2 model object, counting the language detections it is asked for."""

    def __init__(self, inner):
        self._inner = inner
        self.detected = 0

    def detect_language(self, features):
        ranked = self._inner.detect_language(features)
        self.detected += len(ranked)
        return ranked

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def test_detection_once_per_episode(run, asr: WhisperAsr, monkeypatch) -> None:
    calls = []
    original = asr.model.detect_language
    monkeypatch.setattr(asr.model, "detect_language", lambda **kw: calls.append(kw) or original(**kw))
    results = run(detect_per="episode")
    _assert_contract(results, len(SEGMENTS))
    assert len(calls) == 1
    assert calls[0]["audio"].size <= 30 * 16_000  # only the first ~30 s of speech is looked at


def test_detection_per_segment(run, asr: WhisperAsr, monkeypatch) -> None:
    counting = _CountingCt2(asr.model.model)
    monkeypatch.setattr(asr.model, "model", counting)
    results = run(detect_per="segment", batch_size=2)  # 3 segments -> detection batches of 2 + 1
    _assert_contract(results, len(SEGMENTS))
    assert counting.detected == len(SEGMENTS)
    assert all(t.keep for t in results)


def test_unsupported_language_is_dropped_with_reason(run) -> None:
    results = run(supported_languages=("xx",))
    _assert_contract(results, len(SEGMENTS))
    for t in results:
        assert not t.keep and t.text == ""
        assert t.reason.startswith("unsupported_language:") and t.language in t.reason


@pytest.mark.parametrize("detect_per", ["episode", "segment"])
def test_low_probability_is_dropped_with_reason(run, detect_per: str) -> None:
    results = run(min_language_probability=1.01, detect_per=detect_per)
    _assert_contract(results, len(SEGMENTS))
    assert all(not t.keep and t.reason.startswith("low_language_probability:") for t in results)


def test_word_timestamps_in_episode_time(run) -> None:
    results = run(word_timestamps=True)
    _assert_contract(results, len(SEGMENTS))
    for (start, end), t in zip(SEGMENTS, results, strict=True):
        assert t.words, "words were asked for"
        for w in t.words:
            assert set(w) == {"word", "start", "end", "probability"}
            # Whisper aligns on whole seconds of the clip, so a word may end up to the next full second.
            assert start - 0.02 <= w["start"] <= w["end"] <= start + math.ceil(end - start) + 0.02
            assert 0.0 <= w["probability"] <= 1.0


def test_empty_and_out_of_range_segments_keep_their_place(run) -> None:
    segments = [SEGMENTS[0], (7.0, 7.0), (999.0, 1000.0), SEGMENTS[1]]
    results = run(segments, language="en", word_timestamps=True)
    assert len(results) == 4
    assert [t.keep for t in results] == [True, False, False, True]
    assert results[1].reason.startswith("empty_segment:") and results[2].reason.startswith("empty_segment:")
    assert results[1].words == [] and results[1].text == ""
    assert run([]) == []


def test_config_and_device_rules(tiny_model: Path) -> None:
    assert resolve_device("cpu") == ("cpu", 0)
    assert resolve_device("cuda:1") == ("cuda", 1)
    with pytest.raises(ValueError):
        resolve_device("gpu")
    assert resolve_compute_type("auto", "cuda") == "float16"
    assert resolve_compute_type("auto", "cpu") == "int8"
    assert resolve_compute_type("int8_float16", "cuda") == "int8_float16"
    with pytest.raises(ValueError, match="supported_languages"):
        AsrConfig(language="es")  # not one of Emilia's six: every segment would be dropped
    with pytest.raises(ValueError):
        AsrConfig(detect_per="file")
    with pytest.raises(ValueError, match="model's languages"):
        WhisperAsr(_config(tiny_model, language="yue", supported_languages=("yue",)))  # 99-language model


def test_batched_decoding_gives_each_segment_its_own_transcript(run, capsys) -> None:
    """A batch of segments decodes to what each segment gives alone: no transcript lands on another segment's slot
    and padding in a batch changes nothing. Also prints the CPU cost per segment (visible in -s runs)."""
    alone = [run([seg], language="en", batch_size=1)[0].text for seg in SEGMENTS]
    assert len(set(alone)) == len(SEGMENTS), "forced-language texts differ per segment, so a mix-up would show"
    started = time.perf_counter()
    batched = run(language="en", batch_size=len(SEGMENTS))
    per_segment = (time.perf_counter() - started) / len(SEGMENTS)
    assert [t.text for t in batched] == alone
    with capsys.disabled():
        print(f"\ntiny whisper, CPU, beam 1, batch {len(SEGMENTS)}: {per_segment * 1000:.0f} ms per ~4.7 s segment")
