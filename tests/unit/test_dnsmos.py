"""DNSMOS with Microsoft's real ONNX models: it must rank clean speech above noisy speech, tile short clips, and give
the same numbers whether clips are scored alone or batched together.

The model files live in ../shared/models/dnsmos (see its README); the model tests skip where they are absent, and
fail there with EMILIA_REQUIRE_SHARED_MODELS=1 (CI; tests/shared_models.py). The window, tiling, filterbank and
device helpers are tested without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emilia_pipe.audio import decode, resample
from emilia_pipe.dnsmos import (
    DNSMOS_SR,
    WINDOW_SAMPLES,
    Dnsmos,
    DnsmosConfig,
    log_mel,
    mel_filterbank,
    tile_to_window,
    window_starts,
)
from tests.shared_models import SHARED_MODELS, needs_shared_models

SIG_BAK_OVR = SHARED_MODELS / "dnsmos/sig_bak_ovr.onnx"
P808 = SHARED_MODELS / "dnsmos/model_v8.onnx"
MONOLOGUE = Path(__file__).resolve().parents[2] / "samples" / "monologue.mp3"
KEYS = {"sig", "bak", "ovrl"}

needs_models = needs_shared_models("dnsmos/sig_bak_ovr.onnx", "dnsmos/model_v8.onnx")


@pytest.fixture(scope="module")
def dnsmos() -> Dnsmos:
    """One instance for the module: sessions load once, as in a worker."""
    return Dnsmos(DnsmosConfig(str(SIG_BAK_OVR), str(P808), batch_size=4))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """10 s of the monologue at 16 kHz (1-11 s: speech all through, one 9.01 s window)."""
    audio = decode(MONOLOGUE, DNSMOS_SR)
    return audio[1 * DNSMOS_SR : 11 * DNSMOS_SR]


def with_white_noise(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.size)
    noise *= np.sqrt(np.mean(np.square(clean, dtype=np.float64)) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


def assert_in_range(scores: dict[str, float]) -> None:
    for key, value in scores.items():
        assert 1.0 <= value <= 5.0, f"{key}={value} outside the MOS scale"


# --- with the real models -------------------------------------------------------------------------------------


@needs_models
def test_clean_speech_scores_above_noisy_speech(dnsmos: Dnsmos, speech: np.ndarray):
    clean = dnsmos.score(speech, DNSMOS_SR)
    noisy = dnsmos.score(with_white_noise(speech, snr_db=0.0), DNSMOS_SR)
    assert_in_range(clean)
    assert_in_range(noisy)
    # Measured: clean OVRL 2.96 / BAK 4.02, 0 dB white noise OVRL 1.33 / BAK 1.20.
    assert clean["ovrl"] > noisy["ovrl"] + 1.0, (clean, noisy)
    assert clean["bak"] > noisy["bak"] + 2.0, (clean, noisy)
    assert clean["p808"] > noisy["p808"], (clean, noisy)


@needs_models
def test_short_clip_is_tiled_and_scored(dnsmos: Dnsmos, speech: np.ndarray):
    short = speech[: 3 * DNSMOS_SR]
    scores = dnsmos.score(short, DNSMOS_SR)
    assert set(scores) == KEYS | {"p808"}
    assert_in_range(scores)
    # The reference doubles 3 s to 12 s: scoring the 12 s repetition directly must give the same numbers.
    repeated = dnsmos.score(np.tile(short, 4), DNSMOS_SR)
    for key in scores:
        assert scores[key] == pytest.approx(repeated[key], abs=1e-4)


@needs_models
def test_score_many_equals_score_per_clip(dnsmos: Dnsmos, speech: np.ndarray):
    # batch_size 4 with 3 + 1 + 1 + 3 windows: batches cut across clip boundaries.
    twelve_s = np.concatenate([speech, speech[: 2 * DNSMOS_SR]])
    clips = [speech[: 3 * DNSMOS_SR], speech, with_white_noise(speech, 5.0), twelve_s]
    together = dnsmos.score_many(clips, DNSMOS_SR)
    assert len(together) == len(clips)
    for clip, batched in zip(clips, together, strict=True):
        alone = dnsmos.score(clip, DNSMOS_SR)
        assert set(batched) == set(alone)
        for key in alone:
            assert batched[key] == pytest.approx(alone[key], abs=1e-4), key
        assert_in_range(batched)
    assert dnsmos.score_many([], DNSMOS_SR) == []


@needs_models
def test_p808_only_when_configured(speech: np.ndarray):
    without = Dnsmos(DnsmosConfig(str(SIG_BAK_OVR)))
    scores = without.score(speech, DNSMOS_SR)
    assert set(scores) == KEYS
    assert_in_range(scores)


@needs_models
def test_pipe_rate_input_is_resampled(dnsmos: Dnsmos, speech: np.ndarray):
    """The pipe hands 24 kHz audio; resampling to 16 kHz inside must give the 16 kHz scores."""
    at_16k = dnsmos.score(speech, DNSMOS_SR)
    at_24k = dnsmos.score(resample(speech, DNSMOS_SR, 24_000), 24_000)
    for key in KEYS:
        assert at_24k[key] == pytest.approx(at_16k[key], abs=0.05), key


# --- without models -------------------------------------------------------------------------------------------


def test_window_count_follows_the_reference():
    """`int(floor(n / 16000) - 9.01) + 1` windows, as in dnsmos_local.py."""
    for n in [WINDOW_SAMPLES, 10 * DNSMOS_SR, 10 * DNSMOS_SR + 5000, 11 * DNSMOS_SR, 12 * DNSMOS_SR, 60 * DNSMOS_SR]:
        expected = int(np.floor(n / DNSMOS_SR) - 9.01) + 1
        starts = window_starts(n)
        assert len(starts) == expected
        assert starts[-1] + WINDOW_SAMPLES <= n


def test_tiling_doubles_until_one_window():
    clip = np.arange(3 * DNSMOS_SR, dtype=np.float32)
    tiled = tile_to_window(clip)
    assert tiled.size == 12 * DNSMOS_SR
    np.testing.assert_array_equal(tiled[3 * DNSMOS_SR : 6 * DNSMOS_SR], clip)
    long_clip = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    assert tile_to_window(long_clip) is long_clip
    with pytest.raises(ValueError, match="empty"):
        tile_to_window(np.zeros(0, dtype=np.float32))


def test_log_mel_matches_the_p808_input_shape():
    filters = mel_filterbank()
    assert filters.shape == (120, 161)
    assert np.all(filters.sum(axis=1) > 0), "every mel band must cover at least one FFT bin"
    rng = np.random.default_rng(0)
    feats = log_mel(rng.standard_normal((2, WINDOW_SAMPLES - 160)).astype(np.float32), filters)
    assert feats.shape == (2, 900, 120) and feats.dtype == np.float32
    # dB relative to each window's maximum, floored 80 dB below it, mapped by (dB + 40) / 40: range [-1, 1].
    assert feats.max(axis=(1, 2)) == pytest.approx([1.0, 1.0])
    assert feats.min() >= -1.0 - 1e-6


def test_cuda_without_the_provider_is_an_error_not_a_cpu_run(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime as ort

    from emilia_pipe.devices import DeviceError, onnx_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="dnsmos: device 'cuda:1' was requested but this onnxruntime .* has no "
                                          "CUDAExecutionProvider"):
        onnx_providers("cuda:1", "dnsmos")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers("cuda:1", "dnsmos") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_providers("CUDA", "dnsmos") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert onnx_providers("cpu", "dnsmos") == ["CPUExecutionProvider"]
    for bad in ["gpu", "cuda:x", "tpu:0"]:
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            onnx_providers(bad, "dnsmos")


def test_device_from_env():
    cfg = DnsmosConfig.from_env("m.onnx", None, env={"DNSMOS_DEVICE": "cuda:2"})
    assert cfg.device == "cuda:2" and cfg.batch_size == 16
    assert DnsmosConfig.from_env("m.onnx", env={}).device == "cpu"


def test_the_stand_ins_spread_a_steady_voice_enough_for_the_collapse_check(tmp_path: Path):
    """A fresh machine without the real files runs `make demo` on the stand-ins: their scores for the steady synthetic
    monologue must differ between segments as a working model's do, or `dnsmos_not_collapsed` blocks the batch."""
    import polars as pl

    from emilia_pipe.batch_checks import dnsmos_not_collapsed
    from emilia_pipe.tiny import dnsmos as stand_ins

    sig, p808 = stand_ins.build(tmp_path)
    model = Dnsmos(DnsmosConfig(str(sig), str(p808)))
    audio = decode(MONOLOGUE, DNSMOS_SR)
    clips = [audio[i * 10 * DNSMOS_SR:(i + 1) * 10 * DNSMOS_SR] for i in range(4)]  # four 10 s of one steady voice
    scores = model.score_many(clips, DNSMOS_SR)
    catalogue = pl.DataFrame({f"dnsmos_{m}": [s[m] for s in scores] for m in ("ovrl", "sig", "bak")})
    outcome = dnsmos_not_collapsed(catalogue)
    assert outcome.passed, outcome.text
    assert all(1.0 <= s[m] <= 5.0 for s in scores for m in ("ovrl", "sig", "bak")), scores
