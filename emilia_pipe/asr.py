"""Whisper ASR over the segments the pipe has already cut: one transcript per segment, with Emilia's language filter.

Emilia transcribes each speaker-homogeneous VAD segment with batched Whisper, detects the language once for the
whole file (or per segment in multilingual mode), and drops audio whose language is not one of its six or whose
detection is unsure. This module does the same with faster-whisper's `BatchedInferencePipeline`:

- The segments go in as `clip_timestamps` with `vad_filter=False`: no second VAD, and in this mode (without
  timestamp tokens) the pipeline returns exactly one segment per clip, so the Nth transcript is the Nth input.
- Language is decided before decoding, so rejected segments are never decoded (the expensive part on a GPU):
  they come back with empty text, `keep=False` and a `reason` that starts with a stable code
  (`unsupported_language:`, `low_language_probability:`, `empty_segment:`).
- The batched pipeline decodes with the first temperature only (no fallback), as faster-whisper documents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import islice

import ctranslate2
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import pad_or_trim

from emilia_pipe.audio import resample

log = logging.getLogger(__name__)

WHISPER_SR = 16_000
MIN_CLIP_SAMPLES = 160  # one 10 ms mel hop: anything shorter has no frame for Whisper to read
EPISODE_LID_S = 30.0  # Whisper sees 30 s windows; more speech would not change a one-window detection
EMILIA_LANGUAGES = ("zh", "en", "ja", "ko", "de", "fr")


@dataclass(frozen=True)
class AsrConfig:
    model: str = "large-v3"  # faster-whisper size name, HF id (CTranslate2 repo) or local dir; Emilia used "medium"
    device: str = "auto"  # "cpu" | "cuda" | "cuda:N" | "auto"
    compute_type: str = "auto"  # auto -> float16 on GPU, int8 on CPU
    batch_size: int = 16  # BATCH_SIZE
    language: str | None = None  # ASR_LANGUAGE: force a language (skips detection)
    detect_per: str = "episode"  # "episode" | "segment"
    supported_languages: tuple[str, ...] = EMILIA_LANGUAGES
    min_language_probability: float = 0.5
    word_timestamps: bool = False
    initial_prompt: str | None = None
    beam_size: int = 5
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # Tokens decoded per segment at most (None: Whisper's own 448). Benchmarks on random weights set it: such a
    # model never emits end-of-text, so without a cap every segment would cost a full 448-token decode.
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        # Fail at construction, not an hour into a batch.
        if self.detect_per not in ("episode", "segment"):
            raise ValueError(f"detect_per must be 'episode' or 'segment', not {self.detect_per!r}")
        if self.batch_size < 1 or self.beam_size < 1:
            raise ValueError("batch_size and beam_size must be >= 1")
        if self.language is not None and self.language not in self.supported_languages:
            raise ValueError(
                f"forced language {self.language!r} is not in supported_languages {self.supported_languages}: "
                "every segment would be dropped"
            )


@dataclass
class Transcript:
    """One input segment's result. `keep=False` means the dataset must drop it; `reason` says why."""

    text: str
    language: str
    language_probability: float
    words: list[dict] | None  # [{word, start, end, probability}] in episode seconds; None unless asked for
    keep: bool
    reason: str | None = None


def resolve_device(device: str) -> tuple[str, int]:
    """`"auto"` means CUDA when CTranslate2 sees a GPU; `"cuda:N"` becomes ("cuda", N) as CTranslate2 wants."""
    if device == "auto":
        return ("cuda", 0) if ctranslate2.get_cuda_device_count() > 0 else ("cpu", 0)
    if device == "cpu":
        return "cpu", 0
    if device == "cuda":
        return "cuda", 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {device!r}")


def resolve_compute_type(compute_type: str, device: str) -> str:
    """float16 on GPU, int8 on CPU: the fastest types CTranslate2 supports everywhere we run, at Whisper's accuracy."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class WhisperAsr:
    """Loads the model once; `transcribe` is then called per episode."""

    def __init__(self, config: AsrConfig):
        self.config = config
        self.device, device_index = resolve_device(config.device)
        self.compute_type = resolve_compute_type(config.compute_type, self.device)
        self.model = WhisperModel(
            config.model, device=self.device, device_index=device_index, compute_type=self.compute_type
        )
        self.pipeline = BatchedInferencePipeline(self.model)
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = self._model_languages()
        if config.language is not None and config.language not in self.languages:
            raise ValueError(f"forced language {config.language!r} is not one of the model's languages")

    def _model_languages(self) -> tuple[str, ...]:
        """The codes this checkpoint has tokens for (99 before large-v3, 100 with "yue"; "en" for .en models)."""
        if not self.multilingual:
            return ("en",)
        tok = self.model.hf_tokenizer
        ids = {code: tok.token_to_id(f"<|{code}|>") for code in self.model.supported_languages}
        return tuple(sorted((code for code, i in ids.items() if i is not None), key=ids.__getitem__))  # Whisper's order

    def transcribe(self, audio: np.ndarray, sample_rate: int, segments: list[tuple[float, float]]) -> list[Transcript]:
        """One `Transcript` per `(start_s, end_s)` segment, in input order; segments are never merged or split.

        Segments should be at most 30 s (Emilia's are 3-30 s): Whisper reads only the first 30 s of a longer one.
        """
        if not segments:
            return []
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
        audio16 = np.ascontiguousarray(resample(audio, sample_rate, WHISPER_SR))
        bounds = [self._bounds(start, end, audio16.size) for start, end in segments]
        clips = [audio16[a:b] for a, b in bounds]
        present = [i for i, clip in enumerate(clips) if clip.size >= MIN_CLIP_SAMPLES]

        languages = self._languages(clips, present)
        results: list[Transcript | None] = [None] * len(segments)
        groups: dict[str, list[int]] = {}
        for i, (start, end) in enumerate(segments):
            language, probability = languages.get(i, (self.config.language or "", 0.0))
            if i not in languages:
                reason: str | None = f"empty_segment: [{start:.3f}, {end:.3f}] s holds under 10 ms of audio"
            else:
                reason = self._rejection(language, probability)
            if reason is None:
                groups.setdefault(language, []).append(i)
            else:
                words = [] if self.config.word_timestamps else None
                results[i] = Transcript("", language, probability, words, keep=False, reason=reason)

        for language, indices in groups.items():
            for i, segment in zip(indices, self._decode(audio16, [bounds[i] for i in indices], language), strict=True):
                results[i] = Transcript(
                    text=segment.text.strip(),
                    language=language,
                    language_probability=languages[i][1],
                    words=self._words(segment),
                    keep=True,
                )
        return results  # type: ignore[return-value]  # every index was filled above

    @staticmethod
    def _bounds(start: float, end: float, n: int) -> tuple[int, int]:
        """Sample bounds at 16 kHz, clamped to the audio (a segment past the end becomes empty, not an error)."""
        a = min(max(int(round(start * WHISPER_SR)), 0), n)
        b = min(max(int(round(end * WHISPER_SR)), a), n)
        return a, b

    def _languages(self, clips: list[np.ndarray], present: list[int]) -> dict[int, tuple[str, float]]:
        """(language, probability) for each segment in `present` (those with audio), by the configured policy."""
        if not present:
            return {}
        if self.config.language is not None:
            return {i: (self.config.language, 1.0) for i in present}
        if not self.multilingual:
            return {i: ("en", 1.0) for i in present}  # an English-only checkpoint cannot detect
        if self.config.detect_per == "episode":
            language, probability = self._detect_episode([clips[i] for i in present])
            return {i: (language, probability) for i in present}
        return dict(zip(present, self._detect_each([clips[i] for i in present]), strict=True))

    def _detect_episode(self, clips: list[np.ndarray]) -> tuple[str, float]:
        """Detect on the speech of the first segments, up to 30 s: the segments are speech, so no VAD is needed,
        and one 30 s window costs one encoder pass however long the episode is."""
        limit = int(EPISODE_LID_S * WHISPER_SR)
        taken, total = [], 0
        for clip in clips:
            taken.append(clip[: limit - total])
            total += taken[-1].size
            if total >= limit:
                break
        language, probability, _ = self.model.detect_language(audio=np.concatenate(taken))
        log.info("episode language %s (p=%.2f) from %.1f s of speech", language, probability, total / WHISPER_SR)
        return language, float(probability)

    def _detect_each(self, clips: list[np.ndarray]) -> list[tuple[str, float]]:
        """One detection per segment, `batch_size` segments per encoder call (one call each would idle a GPU)."""
        extractor = self.model.feature_extractor
        out: list[tuple[str, float]] = []
        it = iter(clips)
        while batch := list(islice(it, self.config.batch_size)):
            # Same features as the batched pipeline: drop the extractor's extra last frame, pad to 30 s.
            feats = np.stack([pad_or_trim(extractor(clip)[..., :-1]) for clip in batch]).astype(np.float32)
            for ranked in self.model.model.detect_language(ctranslate2.StorageView.from_array(feats)):
                token, probability = ranked[0]
                out.append((token[2:-2], float(probability)))  # "<|en|>" -> "en"
        return out

    def _rejection(self, language: str, probability: float) -> str | None:
        """Emilia's filter: a language outside the supported set, or a detection below the probability bar."""
        cfg = self.config
        if language not in cfg.supported_languages:
            return f"unsupported_language: {language!r} is not one of {list(cfg.supported_languages)}"
        if probability < cfg.min_language_probability:
            return f"low_language_probability: {probability:.3f} < {cfg.min_language_probability}"
        return None

    def _decode(self, audio16: np.ndarray, bounds: list[tuple[int, int]], language: str) -> list:
        """Batched decoding of the given clips in one language; exactly one faster-whisper Segment per clip."""
        cfg = self.config
        clip_timestamps = [{"start": a / WHISPER_SR, "end": b / WHISPER_SR} for a, b in bounds]
        segments, _ = self.pipeline.transcribe(
            audio16,
            language=language,
            clip_timestamps=clip_timestamps,
            vad_filter=False,
            without_timestamps=True,  # one segment per clip: the pipeline splits only at timestamp tokens
            batch_size=cfg.batch_size,
            beam_size=cfg.beam_size,
            temperature=cfg.temperature,
            word_timestamps=cfg.word_timestamps,
            initial_prompt=cfg.initial_prompt,
            max_new_tokens=cfg.max_new_tokens,
        )
        segments = list(segments)
        if len(segments) != len(bounds):
            raise RuntimeError(f"faster-whisper returned {len(segments)} segments for {len(bounds)} clips")
        return segments

    def _words(self, segment) -> list[dict] | None:
        if not self.config.word_timestamps:
            return None
        return [
            {"word": w.word, "start": float(w.start), "end": float(w.end), "probability": float(w.probability)}
            for w in segment.words or []
        ]
