"""Silero VAD: speech regions of an episode, in seconds.

The model ships in the silero-vad wheel, so it loads offline. Silero runs at 16 kHz; the pipe's 24 kHz audio is
resampled with soxr for it. `import silero_vad` sets torch to one thread for the whole process, so the import is
wrapped to put the thread count back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emilia_pipe.audio import resample

VAD_SR = 16_000


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30


def _import_silero():
    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


class SileroVad:
    """Loaded once per worker; `speech_spans` is called per episode."""

    def __init__(self, config: VadConfig | None = None):
        self.config = config or VadConfig()
        silero_vad = _import_silero()
        self._get_speech_timestamps = silero_vad.get_speech_timestamps
        self.model = silero_vad.load_silero_vad(onnx=False)

    def speech_spans(self, audio: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
        if audio.size == 0:
            return []
        wav = torch.from_numpy(np.ascontiguousarray(resample(audio, sample_rate, VAD_SR)))
        c = self.config
        with torch.inference_mode():
            stamps = self._get_speech_timestamps(
                wav,
                self.model,
                threshold=c.threshold,
                sampling_rate=VAD_SR,
                min_speech_duration_ms=c.min_speech_ms,
                min_silence_duration_ms=c.min_silence_ms,
                speech_pad_ms=c.speech_pad_ms,
            )
        return [(s["start"] / VAD_SR, s["end"] / VAD_SR) for s in stamps]
