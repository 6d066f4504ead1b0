"""Decode, probe and standardize audio: any container in, mono float32 at 24 kHz with a set loudness out.

PyAV decodes (it bundles FFmpeg, so no system codec is needed), soxr resamples at high quality. Loudness is
normalised once, to a target in dBFS RMS of the speech-active part, with a peak guard so normalising never clips.
Unlike Amphion's reference pipe we do not peak-normalise afterwards, which would undo the loudness target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soxr

TARGET_SR = 24_000


class AudioError(Exception):
    """An input that cannot be used, with the file and the reason, for the episode's failure record."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    codec: str
    sample_rate: int
    channels: int
    container: str


def probe(path: str | Path) -> AudioInfo:
    """Read the container header and decode the first audio packets, so a file that only *looks* valid fails here.

    A zero-byte file, a text file with an audio extension and a truncated file with no decodable frames raise
    `AudioError` with a reason a human can act on.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams:
                raise AudioError(path, f"no audio stream in container {container.format.name!r}")
            stream = streams[0]
            decoded = 0
            for frame in container.decode(stream):
                decoded += frame.samples
                if decoded >= stream.codec_context.sample_rate:  # one second is proof enough
                    break
            if decoded == 0:
                raise AudioError(path, "no decodable audio frames (truncated or corrupt)")
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            if duration > 2 * _TAIL_CHECK_S:
                reached = _decodable_until(container, stream, duration - _TAIL_CHECK_S)
                if reached < duration - 2 * _TAIL_CHECK_S:
                    raise AudioError(
                        path,
                        f"truncated: the header declares {duration:.1f} s but audio ends near {reached:.1f} s",
                    )
            return AudioInfo(
                duration_s=duration,
                codec=stream.codec_context.codec.canonical_name,  # "mp3" as ffprobe says, not "mp3float"
                sample_rate=stream.codec_context.sample_rate,
                channels=stream.codec_context.channels,
                container=container.format.name,
            )
    except AudioError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise AudioError(path, f"not a readable audio file ({_why(err)})") from err


_TAIL_CHECK_S = 2.0


def _why(err: Exception) -> str:
    """FFmpeg's message without the local path (the caller names the object key instead)."""
    return getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"


def _decodable_until(container, stream, seek_to_s: float) -> float:
    """Seek near the declared end and decode: the time reached (0 when nothing decodes there).

    Cheap proof that a download is complete: a header (Xing/moov) can promise an hour the file no longer holds.
    """
    try:
        container.seek(int(seek_to_s / stream.time_base), stream=stream, any_frame=False, backward=True)
        reached = 0.0
        for frame in container.decode(stream):
            if frame.time is not None:
                reached = max(reached, frame.time + frame.samples / frame.sample_rate)
        return reached
    except av.error.FFmpegError:
        return 0.0


def decode(path: str | Path, sample_rate: int = TARGET_SR) -> np.ndarray:
    """Decode the whole file to mono float32 at `sample_rate` (mixdown by mean, resampling by soxr HQ)."""
    path = Path(path)
    chunks: list[np.ndarray] = []
    src_sr = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=None)
            src_sr = stream.codec_context.sample_rate
            try:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().mean(axis=0))
            except av.error.FFmpegError:
                # A truncated tail is common in downloads; keep what decoded, fail only if nothing did.
                if not chunks:
                    raise
    except AudioError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise AudioError(path, f"decode failed ({_why(err)})") from err
    if not chunks:
        raise AudioError(path, "no decodable audio frames")
    mono = np.concatenate(chunks).astype(np.float32)
    if src_sr != sample_rate:
        mono = soxr.resample(mono, src_sr, sample_rate, quality="HQ").astype(np.float32)
    return mono


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else -np.inf


def normalize_loudness(
    audio: np.ndarray, sample_rate: int, target_dbfs: float = -20.0, peak_ceiling: float = 0.99
) -> np.ndarray:
    """Scale so the active (non-silent) part sits at `target_dbfs` RMS, then cap the gain so no sample clips.

    Active frames are those within 40 dB of the loudest 50 ms frame; measuring only them keeps a long silence from
    pulling the gain up (the "long silence" episode would otherwise come out too loud).
    """
    if audio.size == 0:
        return audio
    hop = max(1, sample_rate // 20)
    n = audio.size // hop
    frames = audio[None, :] if n == 0 else audio[: n * hop].reshape(n, hop)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    if energy.max() <= 1e-12:
        return audio  # digital silence: nothing to normalise
    active = energy >= energy.max() * 1e-4
    level = 10.0 * np.log10(np.mean(energy[active]))
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    peak = float(np.max(np.abs(audio)))
    if peak * gain > peak_ceiling:
        gain = peak_ceiling / peak
    return (audio * gain).astype(np.float32)


def resample(audio: np.ndarray, src_sr: int, dst_sr: int) -> np.ndarray:
    if src_sr == dst_sr:
        return audio
    return soxr.resample(audio, src_sr, dst_sr, quality="HQ").astype(np.float32)


def standardize(path: str | Path, sample_rate: int = TARGET_SR, target_dbfs: float = -20.0) -> np.ndarray:
    """The Emilia pipe's first stage: decode, mono, resample, loudness."""
    return normalize_loudness(decode(path, sample_rate), sample_rate, target_dbfs)
