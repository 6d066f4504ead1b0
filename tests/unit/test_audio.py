"""Probe, decode and loudness on real files (the bundled samples, files made here) and synthetic signals."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emilia_pipe.audio import TARGET_SR, AudioError, decode, normalize_loudness, probe, rms_dbfs

STEMS = ["two_voices", "music_bed", "long_silence", "monologue"]


def ffprobe_duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip())


def tone(freq: float, seconds: float, sr: int, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def active_level_db(audio: np.ndarray, mask: np.ndarray) -> float:
    return rms_dbfs(audio[mask])


# --- probe --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
def test_probe_real_sample(sample, stem: str):
    path = sample(stem)
    info = probe(path)
    assert abs(info.duration_s - ffprobe_duration(path)) < 0.5
    assert info.codec == "mp3"
    assert info.sample_rate == 24_000
    assert info.channels == 1
    assert info.container == "mp3"


def test_probe_wav(tmp_path: Path):
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((44_100 * 3, 2), dtype=np.float32), 44_100, subtype="PCM_16")
    info = probe(path)
    assert abs(info.duration_s - 3.0) < 0.05
    assert (info.sample_rate, info.channels) == (44_100, 2)
    assert info.codec.startswith("pcm_")


def _audio_error(fn, path: Path) -> AudioError:
    with pytest.raises(AudioError) as excinfo:
        fn(path)
    err = excinfo.value
    assert err.path == str(path)
    assert str(path) in str(err), "the message must name the file"
    return err


@pytest.mark.parametrize("fn", [probe, decode], ids=["probe", "decode"])
def test_zero_byte_file(tmp_path: Path, fn):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    err = _audio_error(fn, path)
    if fn is probe:
        assert "empty" in err.reason and "0 bytes" in err.reason
    else:
        assert err.reason


@pytest.mark.parametrize("fn", [probe, decode], ids=["probe", "decode"])
def test_text_file_with_audio_extension(tmp_path: Path, fn):
    path = tmp_path / "not really.m4a"
    path.write_text("<html><body>404 Not Found</body></html>\n" * 20)
    err = _audio_error(fn, path)
    assert "invalid data" in err.reason.lower()
    if fn is probe:
        assert "not a readable audio file" in err.reason


# --- what a refused file is: FFmpeg says "Invalid data" for all of these; the reason tells them apart ------------


def _m4a(tmp_path: Path, faststart: bool) -> bytes:
    """A real 3 s AAC-in-MP4 file from ffmpeg, its index (`moov`) at the front or, as ffmpeg writes by default,
    at the end."""
    path = tmp_path / f"made_{faststart}.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
                    "-c:a", "aac", *(["-movflags", "+faststart"] if faststart else []), str(path)], check=True)
    return path.read_bytes()


def _boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level MP4 boxes as (type, offset, size)."""
    out, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8]
        out.append((kind, offset, size))
        offset += size
    return out


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fn", [probe, decode], ids=["probe", "decode"])
def test_refused_files_say_what_they_are(tmp_path: Path, fn):
    html = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"
    cases = {
        "page.m4a": (html, "an HTML page, not audio"),
        "error.mp3": (b'{"error": "rate limited", "retry_after": 30}\n', "text, not audio"),
        "feed.mp3": (b'<?xml version="1.0"?>\n<rss version="2.0"><channel></channel></rss>\n',
                     "an XML document, not audio"),
        "noise.m4a": (random.Random(7).randbytes(64_000), "not a known audio container"),
    }
    for name, (data, kind) in cases.items():
        err = _audio_error(fn, _write(tmp_path, name, data))
        assert kind in err.reason, (name, err.reason)

    at_end = _m4a(tmp_path, faststart=False)
    assert [b[0] for b in _boxes(at_end)][-1] == b"moov"
    (_, moov_at, _), = [b for b in _boxes(at_end) if b[0] == b"moov"]
    front = _m4a(tmp_path, faststart=True)
    without_moov = b"".join(front[o : o + n] for kind, o, n in _boxes(front) if kind != b"moov")
    no_index = "an MP4 without its index (moov atom missing): incomplete download?"
    for name, data in {"cut_before_moov.m4a": at_end[:moov_at], "moov_removed.m4a": without_moov}.items():
        err = _audio_error(fn, _write(tmp_path, name, data))
        assert no_index in err.reason, (name, err.reason)
    err = _audio_error(fn, _write(tmp_path, "cut_in_mdat.m4a", at_end[: moov_at // 2]))
    assert "moov atom missing" in err.reason and "cut off inside its 'mdat' box" in err.reason

    # the same files whole are audio
    for name, data in {"whole.m4a": at_end, "front.m4a": front}.items():
        assert probe(_write(tmp_path, name, data)).codec == "aac" and decode(tmp_path / name).size > 2 * TARGET_SR


def test_truncated_mp3_head_only(sample, tmp_path: Path):
    path = tmp_path / "truncated.mp3"
    path.write_bytes(sample("monologue").read_bytes()[:600])
    err = _audio_error(probe, path)
    assert "truncated" in err.reason
    assert "not audio" not in err.reason and "container" not in err.reason  # an MP3 start: the sniff knows it


def test_truncated_mp3_half_file(sample, tmp_path: Path):
    full = sample("monologue")
    data = full.read_bytes()
    path = tmp_path / "half.mp3"
    path.write_bytes(data[: len(data) // 2])
    # probe refuses it: the header promises the whole episode
    err = _audio_error(probe, path)
    assert "truncated" in err.reason
    # decode keeps what is there (a cut download still has usable audio up to the cut)
    audio = decode(path)
    seconds = audio.size / TARGET_SR
    assert 0.4 * ffprobe_duration(full) < seconds < 0.6 * ffprobe_duration(full)


def test_missing_file_raises(tmp_path: Path):
    with pytest.raises((AudioError, FileNotFoundError)):
        probe(tmp_path / "nope.mp3")


# --- decode -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
def test_decode_real_sample(sample, stem: str):
    path = sample(stem)
    audio = decode(path)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(audio.size / TARGET_SR - ffprobe_duration(path)) < 0.1
    assert np.isfinite(audio).all()
    assert 0 < np.max(np.abs(audio)) <= 1.0


def test_decode_other_rate(sample):
    path = sample("monologue")
    audio = decode(path, sample_rate=16_000)
    assert audio.dtype == np.float32
    assert abs(audio.size / 16_000 - ffprobe_duration(path)) < 0.1


def test_decode_stereo_44k_wav_to_mono_24k(tmp_path: Path):
    sr, seconds = 44_100, 2.0
    left = tone(440.0, seconds, sr, 0.5)
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_16")

    audio = decode(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size / TARGET_SR - seconds) < 0.1

    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    freqs = np.fft.rfftfreq(audio.size, 1 / TARGET_SR)
    assert abs(freqs[np.argmax(spectrum)] - 440.0) < 2.0
    # mixdown is the mean of the channels: a 0.5 tone on one side and silence on the other gives 0.25
    middle = audio[TARGET_SR // 4 : -TARGET_SR // 4]
    assert np.max(np.abs(middle)) == pytest.approx(0.25, abs=0.01)


def test_decode_mono_wav_at_target_rate_is_unchanged(tmp_path: Path):
    x = tone(1000.0, 1.0, TARGET_SR, 0.3)
    path = tmp_path / "mono24k.wav"
    sf.write(path, x, TARGET_SR, subtype="FLOAT")
    audio = decode(path)
    assert audio.size == x.size
    np.testing.assert_allclose(audio, x, atol=1e-6)


# --- loudness -----------------------------------------------------------------------------------------------


def speechy(seconds: float, sr: int, amp: float, seed: int = 0) -> np.ndarray:
    """A tone under a syllable-rate envelope with some noise: not a constant level, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    x = np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 1330 * t) + 0.1 * rng.standard_normal(t.size)
    x = x * envelope
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


@pytest.mark.parametrize("amp", [0.003, 0.01, 0.05])
@pytest.mark.parametrize("target", [-20.0, -23.0, -16.0])
def test_quiet_signal_reaches_target(amp: float, target: float):
    x = speechy(5.0, TARGET_SR, amp)
    y = normalize_loudness(x, TARGET_SR, target_dbfs=target)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(rms_dbfs(y) - target) < 1.0
    assert np.max(np.abs(y)) <= 0.99 + 1e-6


def test_loud_signal_is_turned_down():
    x = speechy(3.0, TARGET_SR, 0.95)
    y = normalize_loudness(x, TARGET_SR, target_dbfs=-20.0)
    assert abs(rms_dbfs(y) - (-20.0)) < 1.0


@pytest.mark.parametrize("silence", ["digital", "noise_floor"])
def test_long_silence_does_not_raise_the_gain(silence: str):
    sr = TARGET_SR
    speech = speechy(5.0, sr, 0.02)
    rng = np.random.default_rng(1)
    quiet = np.zeros(sr * 15, np.float32) if silence == "digital" else (1e-5 * rng.standard_normal(sr * 15))
    x = np.concatenate([speech, quiet.astype(np.float32)])  # 75 % silence
    mask = np.zeros(x.size, bool)
    mask[: speech.size] = True

    y = normalize_loudness(x, sr, target_dbfs=-20.0)
    assert abs(active_level_db(y, mask) - (-20.0)) < 1.0
    # the same gain as the speech alone would get
    alone = normalize_loudness(speech, sr, target_dbfs=-20.0)
    np.testing.assert_allclose(y[: speech.size], alone, rtol=0.05, atol=1e-6)
    # the whole-file RMS is far below target: the silence was not counted
    assert rms_dbfs(y) < -24.0


def test_silence_in_the_middle_and_at_both_ends():
    sr = TARGET_SR
    s = speechy(2.0, sr, 0.01)
    gap = np.zeros(sr * 4, np.float32)
    x = np.concatenate([gap, s, gap, s, gap])
    y = normalize_loudness(x, sr)
    mask = np.abs(x) > 0
    mask = np.concatenate([np.zeros(gap.size, bool), np.ones(s.size, bool)] * 2 + [np.zeros(gap.size, bool)])
    assert abs(active_level_db(y, mask) - (-20.0)) < 1.0
    assert np.all(y[~mask] == 0)


@pytest.mark.parametrize("spike", [0.2, 0.5, 1.0, 4.0])
def test_peak_never_exceeds_ceiling(spike: float):
    x = speechy(3.0, TARGET_SR, 0.01)
    x[TARGET_SR] = spike  # one click far above the speech: the gain to reach target would clip it
    y = normalize_loudness(x, TARGET_SR, target_dbfs=-14.0)
    assert np.max(np.abs(y)) <= 0.99 + 1e-6
    assert np.max(np.abs(y)) == pytest.approx(0.99, abs=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_peak_ceiling_random_signals(seed: int):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(TARGET_SR * 2) * rng.uniform(1e-4, 2.0)).astype(np.float32)
    x[rng.integers(0, x.size, 5)] *= rng.uniform(1, 50)
    target = float(rng.uniform(-30, -3))
    y = normalize_loudness(x, TARGET_SR, target_dbfs=target)
    assert np.max(np.abs(y)) <= 0.99 + 1e-6
    assert rms_dbfs(y) <= target + 1.0


def test_custom_peak_ceiling():
    x = speechy(2.0, TARGET_SR, 0.01)
    y = normalize_loudness(x, TARGET_SR, target_dbfs=-3.0, peak_ceiling=0.5)
    assert np.max(np.abs(y)) <= 0.5 + 1e-6


def test_digital_silence_and_empty_are_left_alone():
    z = np.zeros(TARGET_SR, np.float32)
    assert np.array_equal(normalize_loudness(z, TARGET_SR), z)
    e = np.zeros(0, np.float32)
    assert normalize_loudness(e, TARGET_SR).size == 0


def test_very_short_signal():
    x = tone(440.0, 0.01, TARGET_SR, 0.01)  # shorter than one 50 ms frame
    y = normalize_loudness(x, TARGET_SR)
    assert abs(rms_dbfs(y) - (-20.0)) < 1.0


def test_normalize_real_sample_with_long_silence(sample):
    audio = decode(sample("long_silence"))
    y = normalize_loudness(audio, TARGET_SR)
    assert np.max(np.abs(y)) <= 0.99 + 1e-6
    # frames that carry the speech (not the silence) sit near the target, unless the peak guard held the gain
    hop = TARGET_SR // 20
    frames = y[: y.size // hop * hop].reshape(-1, hop)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    active = energy >= energy.max() * 1e-4
    assert active.mean() < 0.9  # the sample really has silence in it
    level = 10 * np.log10(np.mean(energy[active]))
    peak_limited = np.max(np.abs(y)) > 0.98
    assert abs(level - (-20.0)) < 1.0 or (peak_limited and level < -20.0)
