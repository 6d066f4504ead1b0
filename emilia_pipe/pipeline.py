"""The Emilia pipe: chains the stages, loading every model once and reusing it for many episodes.

    standardize -> [separate] -> [diarize] -> VAD -> segment -> [ASR] -> [DNSMOS] -> export

Stages in brackets are optional objects handed to the pipeline (issue "full Emilia pipe" fills them in); without a
diarizer the whole episode is one speaker, without ASR the language is the caller's hint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emilia_pipe import audio as audio_io
from emilia_pipe.export import Segment, write_episode
from emilia_pipe.keys import UNKNOWN_LANGUAGE, safe_language, segment_name
from emilia_pipe.segmentation import SegmentationRules, Span, segment
from emilia_pipe.vad import SileroVad, VadConfig


class Separator(Protocol):
    def vocals(self, audio: np.ndarray, sample_rate: int) -> np.ndarray: ...


class Diarizer(Protocol):
    def turns(self, audio: np.ndarray, sample_rate: int, episode_id: str) -> list[Span]: ...


@dataclass(frozen=True)
class PipeConfig:
    sample_rate: int = audio_io.TARGET_SR
    target_dbfs: float = -20.0
    mp3_bitrate_kbps: int = 64
    vad: VadConfig = field(default_factory=VadConfig)
    rules: SegmentationRules = field(default_factory=SegmentationRules)


@dataclass
class EpisodeResult:
    episode_id: str
    language: str
    duration_s: float
    segments: list[Segment]
    stage_seconds: dict[str, float]
    files: list[Path]

    @property
    def speech_s(self) -> float:
        return sum(s.end - s.start for s in self.segments)


class EmiliaPipeline:
    """Build once per worker (models load in `__init__`), then call `process` for each episode."""

    def __init__(
        self,
        config: PipeConfig | None = None,
        separator: Separator | None = None,
        diarizer: Diarizer | None = None,
    ):
        self.config = config or PipeConfig()
        self.vad = SileroVad(self.config.vad)
        self.separator = separator
        self.diarizer = diarizer

    def process(
        self,
        path: str | Path,
        episode_id: str,
        out_dir: Path,
        language_hint: str | None = None,
        episode_meta: dict[str, Any] | None = None,
    ) -> EpisodeResult:
        """Run every stage on one file and write `<out_dir>/<id>_<idx>.mp3` plus `all_segments.json`.

        Raises `audio.AudioError` for unusable input; the caller records it against the episode.
        """
        cfg = self.config
        timings: dict[str, float] = {}

        def timed(name: str, fn, *args):
            t0 = time.perf_counter()
            out = fn(*args)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
            return out

        audio = timed("standardize", audio_io.standardize, path, cfg.sample_rate, cfg.target_dbfs)
        duration = audio.size / cfg.sample_rate
        vocals = timed("separate", self.separator.vocals, audio, cfg.sample_rate) if self.separator else audio
        if self.diarizer:
            turns = timed("diarize", self.diarizer.turns, vocals, cfg.sample_rate, episode_id)
        else:
            turns = [Span(0.0, duration, f"{episode_id}_S00")]
        speech = timed("vad", self.vad.speech_spans, vocals, cfg.sample_rate)
        spans = segment(turns, speech, cfg.rules)
        language = safe_language(language_hint) if language_hint else UNKNOWN_LANGUAGE
        segments = [
            Segment(id=segment_name(episode_id, i), start=s.start, end=s.end, speaker=s.speaker, language=language)
            for i, s in enumerate(spans)
        ]
        meta = {"episode_id": episode_id, "duration": round(duration, 3), "language": language}
        meta.update(episode_meta or {})
        files = timed("export", write_episode, out_dir, vocals, cfg.sample_rate, segments, meta, cfg.mp3_bitrate_kbps)
        return EpisodeResult(episode_id, language, duration, segments, timings, files)
