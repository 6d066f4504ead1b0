"""Export: the MP3 bitrate keeps the 8-11 kHz band TTS models need, and an episode directory is written in the order
that makes `all_segments.json` a completeness marker.

Band energies are measured by encoding with lameenc, writing the bytes to a file and decoding them with PyAV, the
same path a dataset consumer takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emilia_pipe import export
from emilia_pipe.audio import decode
from emilia_pipe.export import ALL_SEGMENTS, Segment, encode_mp3, write_episode
from emilia_pipe.keys import segment_name

SR = 24_000
MONOLOGUE = Path(__file__).resolve().parents[2] / "samples" / "monologue.mp3"


def band_energy(audio: np.ndarray, lo_hz: float, hi_hz: float, sample_rate: int = SR) -> float:
    """Energy between lo and hi (Parseval: sum |X|^2 / N), so the encoder's padding of silence does not change it."""
    x = np.asarray(audio, dtype=np.float64)
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    band = (freqs >= lo_hz) & (freqs <= hi_hz)
    return float(np.sum(np.abs(spectrum[band]) ** 2) / x.size)


def band_noise(n: int, lo_hz: float, hi_hz: float, rms: float, seed: int = 0) -> np.ndarray:
    """White noise with everything outside [lo, hi] zeroed in the spectrum: sibilance-like energy, nothing else."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    spectrum[(freqs < lo_hz) | (freqs > hi_hz)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise * (rms / np.sqrt(np.mean(noise**2)))


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    """5 s of the monologue plus a strong 9-11 kHz band (the sample MP3 itself has little energy up there)."""
    speech = decode(MONOLOGUE, SR)[SR : 6 * SR].astype(np.float64)
    return (speech + band_noise(speech.size, 9_000, 11_000, rms=0.05)).astype(np.float32)


def round_trip(audio: np.ndarray, bitrate_kbps: int, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"clip_{bitrate_kbps}k.mp3"
    path.write_bytes(encode_mp3(audio, SR, bitrate_kbps=bitrate_kbps))
    return decode(path, SR)


def change_db(after: float, before: float) -> float:
    return 10.0 * np.log10(max(after, 1e-30) / before)


def test_64_kbps_keeps_the_band_above_8_khz_and_32_kbps_loses_it(source: np.ndarray, tmp_path: Path):
    hf_source = band_energy(source, 8_500, 11_500)
    speech_source = band_energy(source, 300, 3_000)
    at_64 = round_trip(source, 64, tmp_path)
    at_32 = round_trip(source, 32, tmp_path)  # ffmpeg's libmp3lame default bitrate

    kept_64 = change_db(band_energy(at_64, 8_500, 11_500), hf_source)
    kept_32 = change_db(band_energy(at_32, 8_500, 11_500), hf_source)
    # Measured: 64 kbps -0.3 dB, 32 kbps about -94 dB (LAME low-passes near 8.5 kHz there).
    assert kept_64 > -6.0, f"64 kbps lost {-kept_64:.1f} dB of the 8.5-11.5 kHz band"
    assert kept_32 < -20.0, f"32 kbps kept the 8.5-11.5 kHz band ({kept_32:.1f} dB): the default was not the problem"
    assert kept_64 - kept_32 > 20.0

    # Control: both keep the speech band, so the difference above is the low-pass, not a broken encode.
    for decoded in (at_64, at_32):
        assert abs(change_db(band_energy(decoded, 300, 3_000), speech_source)) < 1.5


def test_encode_mp3_is_24khz_mono_mp3(source: np.ndarray, tmp_path: Path):
    from emilia_pipe.audio import probe

    path = tmp_path / "clip.mp3"
    path.write_bytes(encode_mp3(source, SR))
    info = probe(path)
    assert (info.codec, info.sample_rate, info.channels) == ("mp3", SR, 1)
    assert info.duration_s == pytest.approx(source.size / SR, abs=0.15)


def test_write_episode_writes_mp3s_first_then_all_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out_dir = tmp_path / "processed" / "en" / "ep1"
    audio = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8 * SR) / SR)).astype(np.float32)
    words = [{"word": "héllo", "start": 0.5, "end": 0.9, "probability": 0.98}]
    segments = [
        Segment(id=segment_name("ep1", 0), start=0.5, end=3.25, speaker="ep1_S00", language="en", text="héllo 你好",
                language_probability=0.97, dnsmos={"sig": 3.5, "bak": 4.0, "ovrl": 3.2}, words=words),
        Segment(id=segment_name("ep1", 1), start=4.0004, end=7.5, speaker="ep1_S01", language="en",
                extra={"snr_note": "x"}),
    ]
    episode = {"episode_id": "ep1", "duration": 8.0, "language": "en"}

    encoded_before_json: list[bool] = []
    real_encode = export.encode_mp3

    def spy(clip: np.ndarray, sample_rate: int, bitrate_kbps: int = 64) -> bytes:
        encoded_before_json.append(not (out_dir / ALL_SEGMENTS).exists())
        return real_encode(clip, sample_rate, bitrate_kbps)

    monkeypatch.setattr(export, "encode_mp3", spy)
    files = write_episode(out_dir, audio, SR, segments, episode)

    assert encoded_before_json == [True, True], "all_segments.json existed while MP3s were still being written"
    assert [f.name for f in files] == ["ep1_000000.mp3", "ep1_000001.mp3", ALL_SEGMENTS]
    json_path = out_dir / ALL_SEGMENTS
    assert all(json_path.stat().st_mtime_ns >= f.stat().st_mtime_ns for f in files[:-1])

    raw = json_path.read_text(encoding="utf-8")
    assert "你好" in raw, "text must be stored as UTF-8, not \\u escapes"
    doc = json.loads(raw)
    assert doc["episode"] == episode
    first, second = doc["segments"]
    assert first == {
        "id": "ep1_000000", "start": 0.5, "end": 3.25, "duration": 2.75, "speaker": "ep1_S00", "language": "en",
        "text": "héllo 你好", "language_probability": 0.97, "dnsmos": {"sig": 3.5, "bak": 4.0, "ovrl": 3.2},
        "words": words, "wav": "ep1_000000.mp3",
    }
    # No words -> no key; extra fields are merged flat (no "extra" key); times rounded to ms.
    assert "words" not in second and "extra" not in second
    assert second["snr_note"] == "x"
    assert (second["start"], second["end"], second["duration"]) == (4.0, 7.5, 3.5)
    assert second["dnsmos"] is None and second["text"] == "" and second["language_probability"] is None

    for seg in doc["segments"]:
        clip = decode(out_dir / seg["wav"], SR)
        # LAME adds up to ~0.1 s of priming/padding; the clip must be the segment, not the episode.
        assert clip.size / SR == pytest.approx(seg["duration"], abs=0.15)
