"""Silero VAD through the wheel's batched (sequence) ONNX front end: the same spans as the stock streaming model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from emilia_pipe.audio import TARGET_SR, decode, resample
from emilia_pipe.vad import VAD_SR, SileroVad, VadConfig
from tests.conftest import ROOT, SAMPLES


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def stock_spans(audio_24k: np.ndarray, config: VadConfig) -> list[tuple[float, float]]:
    """Silero's own streaming path (TorchScript model, one call per 32 ms frame) on the same 16 kHz audio."""
    from silero_vad import get_speech_timestamps, load_silero_vad

    wav = torch.from_numpy(np.ascontiguousarray(resample(audio_24k, TARGET_SR, VAD_SR)))
    with torch.inference_mode():
        stamps = get_speech_timestamps(wav, load_silero_vad(), threshold=config.threshold, sampling_rate=VAD_SR,
                                       min_speech_duration_ms=config.min_speech_ms,
                                       min_silence_duration_ms=config.min_silence_ms,
                                       speech_pad_ms=config.speech_pad_ms)
    return [(s["start"] / VAD_SR, s["end"] / VAD_SR) for s in stamps]


@pytest.mark.parametrize("stem", ["monologue", "two_voices", "music_bed"])
def test_batched_vad_finds_the_spans_of_the_streaming_model(vad: SileroVad, stem: str):
    audio = decode(SAMPLES / f"{stem}.mp3", TARGET_SR)
    spans = vad.speech_spans(audio, TARGET_SR)
    assert len(spans) >= 3, spans  # real speech in every sample: the comparison below is not between two empties
    assert spans == stock_spans(audio, vad.config)


def test_probabilities_match_the_streaming_model_across_block_edges():
    """Blocks of 7 frames put a block edge every 224 ms: state and context must cross each one unchanged."""
    from silero_vad import load_silero_vad

    audio = resample(decode(SAMPLES / "two_voices.mp3", TARGET_SR), TARGET_SR, VAD_SR)[: VAD_SR * 20]
    small_blocks = SileroVad(VadConfig(max_frames=7))
    batched = small_blocks.model.audio_forward(np.ascontiguousarray(audio, dtype=np.float32))
    stock = load_silero_vad()
    stock.reset_states()
    frames = torch.nn.functional.pad(torch.from_numpy(audio), (0, -audio.size % 512)).reshape(-1, 512)
    with torch.inference_mode():
        streamed = np.array([stock(frame, VAD_SR).item() for frame in frames])
    assert batched.shape == streamed.shape
    assert np.abs(batched - streamed).max() < 1e-4
    assert streamed.max() > 0.9 and streamed.min() < 0.1  # speech and pauses both present


def test_spans_stay_inside_the_audio_and_digital_silence_has_none(vad: SileroVad):
    audio = decode(SAMPLES / "long_silence.mp3", TARGET_SR)
    spans = vad.speech_spans(audio, TARGET_SR)
    assert all(start >= 0 and end <= audio.size / TARGET_SR + 0.1 for start, end in spans)
    assert vad.speech_spans(np.zeros(TARGET_SR * 5, dtype=np.float32), TARGET_SR) == []
    assert vad.speech_spans(np.zeros(0, dtype=np.float32), TARGET_SR) == []


def test_runtime_is_read_back_from_the_onnx_session(vad: SileroVad):
    assert vad.runtime_device == "cpu"
    assert vad.runtime == "silero-vad sequence ONNX on onnxruntime CPUExecutionProvider, 1 thread, 512 frames per call"


def test_loading_keeps_the_process_thread_count():
    """`import silero_vad` sets torch to one thread only the first time it runs, so this needs a fresh process."""
    code = ("import sys, torch; torch.set_num_threads(2); assert 'silero_vad' not in sys.modules; "
            "from emilia_pipe.vad import SileroVad; SileroVad(); print(torch.get_num_threads())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2"]
