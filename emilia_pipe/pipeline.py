"""The Emilia pipe: chains the stages, loading every model once and reusing it for many episodes.

    standardize -> separate -> diarize -> VAD -> segment -> ASR -> DNSMOS -> export

Each stage is optional (its config `None` turns it off): without separation the mix is segmented, without a
diarizer the episode is one speaker, without ASR the language is the caller's hint and the text empty, without
DNSMOS no scores. A segment is dropped only by the segmentation rules or because ASR found its language
unsupported or uncertain (Emilia's rule); DNSMOS scores are recorded, never used to drop a segment.

`all_segments.json` records what ran, not what was configured: `stages` and `stage_seconds` list the stages that
executed for this episode (ASR and DNSMOS do not run on an episode without speech), and `separation_removed_db`
is the level of what separation took out of the mix (so a separator that returned the mix would show).

`process` is `prepare` (decode, resample: CPU), `infer` (the model stages) and `finish` (MP3 export: CPU); a worker
runs them for different episodes at once (`emilia_pipe.pool`). On a GPU the separator's window batches stay on the
device from STFT to inverse STFT; the vocals cross to the host once, chunk by chunk, because every consumer needs
them there: Silero VAD stays on one CPU thread (its batched ONNX front end, about 500x realtime per core on the
2-core VM, so well under one core per GPU at 200 audio hours per GPU hour; see `emilia_pipe.vad`), CTranslate2 and
the MP3 encoder take numpy arrays, and pyannote moves its own 10 s chunks to the GPU.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from emilia_pipe import audio as audio_io
from emilia_pipe.asr import AsrConfig, WhisperAsr
from emilia_pipe.diarization import DiarizationConfig, PyannoteDiarizer
from emilia_pipe.dnsmos import Dnsmos, DnsmosConfig
from emilia_pipe.export import Segment, write_index, write_segments
from emilia_pipe.keys import UNKNOWN_LANGUAGE, safe_language, segment_name
from emilia_pipe.segmentation import SegmentationRules, Span, segment
from emilia_pipe.separation import MdxSeparator, SeparationConfig
from emilia_pipe.vad import SileroVad, VadConfig

T = TypeVar("T")
STAGE_ORDER = ("standardize", "separate", "diarize", "vad", "asr", "dnsmos", "export")
_LEVEL_FLOOR_DB = -120.0


@dataclass(frozen=True)
class PipeConfig:
    sample_rate: int = audio_io.TARGET_SR
    target_dbfs: float = -20.0
    mp3_bitrate_kbps: int = 64
    vad: VadConfig = field(default_factory=VadConfig)
    rules: SegmentationRules = field(default_factory=SegmentationRules)
    separation: SeparationConfig | None = None
    diarization: DiarizationConfig | None = None
    asr: AsrConfig | None = None
    dnsmos: DnsmosConfig | None = None
    # What made the output (emilia_pipe.provenance.pipe_provenance): written into every episode's metadata, so
    # each segment records its model set and code version. None: not recorded (a config built by hand).
    provenance: dict[str, Any] | None = None

    @property
    def stages(self) -> list[str]:
        """The stages this config runs, in the order they run."""
        on = {"separate": self.separation, "diarize": self.diarization, "asr": self.asr, "dnsmos": self.dnsmos}
        return [s for s in STAGE_ORDER if on.get(s, True) is not None]


@dataclass
class Prepared:
    """An episode after the CPU work that precedes the models (`EmiliaPipeline.prepare`)."""

    episode_id: str
    out_dir: Path
    language_hint: str | None
    episode_meta: dict[str, Any]
    audio: np.ndarray | None
    timings: dict[str, float]


@dataclass
class Inferred:
    """An episode after the model stages (`EmiliaPipeline.infer`): what `finish` exports."""

    prepared: Prepared
    vocals: np.ndarray | None
    duration: float
    language: str
    segments: list[Segment]
    dropped: list[dict[str, Any]]
    evidence: dict[str, Any]


@dataclass
class EpisodeResult:
    episode_id: str
    language: str
    duration_s: float
    segments: list[Segment]
    dropped: list[dict[str, Any]]
    stage_seconds: dict[str, float]
    files: list[Path]

    @property
    def speech_s(self) -> float:
        return sum(s.end - s.start for s in self.segments)


class EmiliaPipeline:
    """Build once per worker (every model loads in `__init__`), then call `process` for each episode."""

    def __init__(self, config: PipeConfig | None = None):
        self.config = cfg = config or PipeConfig()
        self.vad = SileroVad(cfg.vad)
        self.separator = MdxSeparator(cfg.separation) if cfg.separation else None
        self.diarizer = PyannoteDiarizer(cfg.diarization) if cfg.diarization else None
        self.asr = WhisperAsr(cfg.asr) if cfg.asr else None
        self.dnsmos = Dnsmos(cfg.dnsmos) if cfg.dnsmos else None

    def process(
        self,
        path: str | Path,
        episode_id: str,
        out_dir: Path,
        language_hint: str | None = None,
        episode_meta: dict[str, Any] | None = None,
    ) -> EpisodeResult:
        """Run every stage on one file and write `<out_dir>/<id>_<idx>.mp3` plus `all_segments.json`.

        The same as `finish(infer(prepare(...)))`; a worker runs the three parts of different episodes at once.
        Raises `audio.AudioError` for unusable input; the caller records it against the episode.
        """
        return self.finish(self.infer(self.prepare(path, episode_id, out_dir, language_hint, episode_meta)))

    def prepare(
        self,
        path: str | Path,
        episode_id: str,
        out_dir: Path,
        language_hint: str | None = None,
        episode_meta: dict[str, Any] | None = None,
    ) -> Prepared:
        """The CPU work before the models: decode, resample, loudness (`audio.standardize`). Thread-safe: no model
        is touched, so a worker runs it for the next episode while `infer` runs the current one."""
        timings: dict[str, float] = {}
        audio = _timed(timings, "standardize", audio_io.standardize, path, self.config.sample_rate,
                       self.config.target_dbfs)
        return Prepared(episode_id, Path(out_dir), language_hint, dict(episode_meta or {}), audio, timings)

    def infer(self, prepared: Prepared) -> Inferred:
        """The model stages, back to back: separation, diarization, VAD, segmentation, ASR, DNSMOS."""
        cfg = self.config
        sr = cfg.sample_rate
        timings = prepared.timings
        episode_id = prepared.episode_id
        audio = prepared.audio
        duration = audio.size / sr
        vocals = _timed(timings, "separate", self.separator.vocals, audio, sr) if self.separator else audio
        evidence: dict[str, Any] = {}
        if self.separator:
            evidence["separation_removed_db"] = removed_db(audio, vocals)
        prepared.audio = None  # the mix is not needed any more: only the vocals are exported
        if self.diarizer:
            turns = _timed(timings, "diarize", self.diarizer.turns, vocals, sr, episode_id)
        else:
            turns = [Span(0.0, duration, f"{episode_id}_S00")]
        speech = _timed(timings, "vad", self.vad.speech_spans, vocals, sr)
        spans = segment(turns, speech, cfg.rules)

        # A language forced on ASR is the episode's language even when no segment survives (silence, music), so
        # the CLI and a batch file an empty episode under the same folder as its speech would have gone.
        forced = self.asr.config.language if self.asr else None
        language_hint = prepared.language_hint
        hint = safe_language(forced or language_hint) if (forced or language_hint) else UNKNOWN_LANGUAGE
        dropped: list[dict[str, Any]] = []
        kept: list[tuple[Span, Any]] = [(s, None) for s in spans]
        if self.asr and spans:
            transcripts = _timed(timings, "asr", self.asr.transcribe, vocals, sr, [(s.start, s.end) for s in spans])
            kept = []
            for span, tr in zip(spans, transcripts, strict=True):
                if tr.keep:
                    kept.append((span, tr))
                else:
                    dropped.append({"start": round(span.start, 3), "end": round(span.end, 3), "reason": tr.reason})
        scores: list[dict[str, float] | None] = [None] * len(kept)
        if self.dnsmos and kept:
            clips = [vocals[int(s.start * sr) : int(s.end * sr)] for s, _ in kept]
            scores = _timed(timings, "dnsmos", self.dnsmos.score_many, clips, sr)

        language = _episode_language([tr for _, tr in kept if tr is not None], hint)
        segments = []
        for i, ((span, tr), score) in enumerate(zip(kept, scores, strict=True)):
            seg = Segment(
                id=segment_name(episode_id, i),
                start=span.start,
                end=span.end,
                speaker=span.speaker,
                language=safe_language(tr.language) if tr else hint,
                text=tr.text.strip() if tr else "",
                language_probability=round(tr.language_probability, 4) if tr else None,
                dnsmos={k: round(v, 4) for k, v in score.items()} if score else None,
                words=tr.words if tr else None,
            )
            segments.append(seg)
        return Inferred(prepared, vocals, duration, language, segments, dropped, evidence)

    def finish(self, inferred: Inferred) -> EpisodeResult:
        """The CPU work after the models: MP3 encode of every segment and `all_segments.json` (thread-safe)."""
        cfg = self.config
        prepared = inferred.prepared
        timings = prepared.timings
        out_dir = prepared.out_dir
        files = _timed(timings, "export", write_segments, out_dir, inferred.vocals, cfg.sample_rate,
                       inferred.segments, cfg.mp3_bitrate_kbps)
        ran = [s for s in STAGE_ORDER if s in timings]
        meta = {"episode_id": prepared.episode_id, "duration": round(inferred.duration, 3),
                "language": inferred.language, "stages": ran,
                "stage_seconds": {s: round(timings[s], 4) for s in ran}, **inferred.evidence,
                "dropped": inferred.dropped}
        if cfg.provenance is not None:
            meta["provenance"] = cfg.provenance
        meta.update(prepared.episode_meta)
        files.append(_timed(timings, "export", write_index, out_dir, inferred.segments, meta))
        inferred.vocals = None
        return EpisodeResult(prepared.episode_id, inferred.language, inferred.duration, inferred.segments,
                             inferred.dropped, timings, files)

    def runtime_devices(self) -> dict[str, str]:
        """Where each model stage really runs, read back from the loaded runtimes (not from the settings): ONNX
        Runtime's session providers or the torch executor's device, CTranslate2's model device, the diarization
        pipeline's torch device."""
        out: dict[str, str] = {"vad": self.vad.runtime_device}
        if self.separator:
            out["separate"] = self.separator.runtime_device
        if self.dnsmos:
            out["dnsmos"] = self.dnsmos.runtime_device
        if self.asr:
            out["asr"] = str(getattr(self.asr.model.model, "device", self.asr.device))
        if self.diarizer:
            out["diarize"] = self.diarizer.runtime_device
        return out

    def runtime_backends(self) -> dict[str, str]:
        """How each model stage runs (library, precision, device, batch), for logs, doctor and benchmark records."""
        out: dict[str, str] = {"vad": self.vad.runtime}
        if self.separator:
            out["separate"] = f"{self.separator.runtime}, {self.separator.batch} windows per call"
        if self.dnsmos:
            out["dnsmos"] = f"{self.dnsmos.runtime}, {self.dnsmos.config.batch_size} windows per call"
        if self.asr:
            out["asr"] = (f"ctranslate2 {self.asr.compute_type} on {self.runtime_devices()['asr']}, "
                          f"batch {self.asr.config.batch_size}")
        if self.diarizer:
            out["diarize"] = self.diarizer.runtime
        return out


def _timed(timings: dict[str, float], name: str, fn: Callable[..., T], *args: Any) -> T:
    t0 = time.perf_counter()
    out = fn(*args)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    return out


def removed_db(mix: np.ndarray, vocals: np.ndarray, chunk: int = 1 << 22) -> float:
    """Energy of `mix - vocals` relative to the mix, in dB (floored at -120 dB: identical signals).

    Summed in chunks so an hour-long episode needs no second full-length array.
    """
    removed = total = 0.0
    for i in range(0, mix.size, chunk):
        m = mix[i : i + chunk].astype(np.float64)
        d = m - vocals[i : i + chunk]
        removed += float(np.dot(d, d))
        total += float(np.dot(m, m))
    if total <= 0.0 or removed <= 0.0:
        return _LEVEL_FLOOR_DB
    return round(max(_LEVEL_FLOOR_DB, 10.0 * math.log10(removed / total)), 2)


def _episode_language(transcripts: list[Any], hint: str) -> str:
    """The language most of the episode's speech is in (by segment count), else the caller's hint."""
    if not transcripts:
        return hint
    return safe_language(Counter(t.language for t in transcripts).most_common(1)[0][0])
