"""Silero VAD: speech regions of an episode, in seconds.

The model ships in the silero-vad wheel, so it loads offline. Silero runs at 16 kHz; the pipe's 24 kHz audio is
resampled with soxr for it.

It runs through the wheel's batched ("sequence") ONNX front end on one CPU thread of ONNX Runtime: one call per
block of `max_frames` 32 ms frames instead of one per frame, with the same recurrent state and context carried
between blocks, so the speech probabilities are those of the stock streaming model (within 1e-5) and the spans the
same. The stock path is a Python loop over frames that holds the GIL for every one (5,643 model calls for 3 min
of audio); the sequence path is about 6x faster on one core and spends its time inside ONNX Runtime with the GIL
released, so a worker's decode and MP3-export threads keep running beside it (`benchmarks/vad_paths.py`). Kept on
the CPU rather than the GPU: a recurrent model of 32 ms steps is latency-bound, and at several hundred times
realtime on one core it costs well under one core per GPU at the throughput target.

`import silero_vad` sets torch to one thread for the whole process, so the import is wrapped to put the thread
count back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emilia_pipe.audio import resample
from emilia_pipe.devices import provider_device

VAD_SR = 16_000


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    max_frames: int = 512  # frames per ONNX call (512 x 32 ms = 16.4 s of audio)


def _import_silero():
    import torch

    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


class SileroVad:
    """Loaded once per worker; `speech_spans` is called per episode."""

    def __init__(self, config: VadConfig | None = None):
        self.config = config or VadConfig()
        silero_vad = _import_silero()
        from silero_vad.sequence_vad import get_speech_timestamps_sequence

        self._get_speech_timestamps = get_speech_timestamps_sequence
        self.model = silero_vad.load_silero_vad(sequence=True, sampling_rate=VAD_SR,
                                                max_frames=self.config.max_frames)

    @property
    def provider(self) -> str:
        """The ONNX Runtime provider the session really runs on (forced to CPU: the image's onnxruntime-gpu too)."""
        return self.model.session.get_providers()[0]

    @property
    def runtime_device(self) -> str:
        return provider_device(self.provider)

    @property
    def runtime(self) -> str:
        threads = self.model.session.get_session_options().intra_op_num_threads
        return (f"silero-vad sequence ONNX on onnxruntime {self.provider}, {threads} thread, "
                f"{self.config.max_frames} frames per call")

    def speech_spans(self, audio: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
        if audio.size == 0:
            return []
        wav = np.ascontiguousarray(resample(audio, sample_rate, VAD_SR), dtype=np.float32)
        c = self.config
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
