"""Decode, probe and standardize audio: any container in, mono float32 at 24 kHz with a set loudness out.

PyAV decodes (it bundles FFmpeg, so no system codec is needed), soxr resamples at high quality. Loudness is
normalised once, to a target in dBFS RMS of the speech-active part, with a peak guard so normalising never clips.
Unlike Amphion's reference pipe we do not peak-normalise afterwards, which would undo the loudness target.
When FFmpeg refuses a file, `sniff` reads its first bytes to say what it is instead (an HTML page, text, an MP4
whose index never arrived, bytes of no known container), so a failure record points at the fix.
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
                raise AudioError(path, _with_kind(path, "no decodable audio frames", "truncated or corrupt"))
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
        raise AudioError(path, _with_kind(path, "not a readable audio file", _why(err))) from err


_TAIL_CHECK_S = 2.0


def _with_kind(path: Path, what: str, detail: str) -> str:
    """`what: <what the file is> (detail)` when the bytes tell, else `what (detail)`.

    FFmpeg says "Invalid data found when processing input" for an HTML error page, random bytes and an MP4 whose
    index never arrived alike; the first bytes tell them apart, and each calls for a different fix.
    """
    kind = sniff(path)
    return f"{what}: {kind} ({detail})" if kind else f"{what} ({detail})"


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
        raise AudioError(path, _with_kind(path, "decode failed", _why(err))) from err
    if not chunks:
        raise AudioError(path, _with_kind(path, "no decodable audio frames", "truncated or corrupt"))
    mono = np.concatenate(chunks).astype(np.float32)
    if src_sr != sample_rate:
        mono = soxr.resample(mono, src_sr, sample_rate, quality="HQ").astype(np.float32)
    return mono


# What a file that FFmpeg refused really is, from its first bytes -----------------------------------------------

_SNIFF_BYTES = 4096
# Leading bytes of the audio containers FFmpeg reads that the ingest sees (the MP4 family is walked box by box).
_AUDIO_MAGIC = (
    b"ID3", b"RIFF", b"RF64", b"FORM", b"fLaC", b"OggS", b"\x1aE\xdf\xa3", b"#!AMR", b"caff", b"MAC ", b"wvpk",
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", b".snd", b"FLV", b"MPCK", b"MP+", b"TTA1",
)
_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"moof", b"mfra", b"uuid", b"meta"}
_HTML_MARKS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<script", b"<div", b"<p>")


def sniff(path: str | Path) -> str | None:
    """What a file is, when its bytes say it is no audio or an unusable one; None for a known audio container.

    Tells an HTML page (a login wall or error page saved under the episode's name), other text (an error body,
    JSON), an MP4/M4A without its index (the `moov` box, at the end of a non-faststart file, never arrived) and
    bytes no audio container starts with. A known container that fails anyway is the caller's "truncated or
    corrupt".
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
        size = path.stat().st_size
    except OSError:
        return None
    if not head:
        return None
    if _looks_like_mp4(head, size):
        return _mp4_problem(path, size)
    if head.startswith(_AUDIO_MAGIC) or (head[0] == 0xFF and len(head) > 1 and head[1] & 0xE0 == 0xE0):
        return None  # ID3 / an MPEG audio frame sync (MP3, ADTS AAC) / another known container
    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip().lower().encode()
        if any(mark in lowered for mark in _HTML_MARKS):
            return "an HTML page, not audio"
        if lowered.startswith((b"<?xml", b"<rss", b"<feed")):
            return "an XML document, not audio"
        return "text, not audio"
    return "not a known audio container"


def _as_text(head: bytes) -> str | None:
    """The head decoded as text when it is text (UTF-8/16 with few control bytes), else None."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            head, encoding = head[len(bom) :], codec
            break
    else:
        if b"\x00" in head:
            return None
        encoding = "utf-8"
    text = head.decode(encoding, errors="replace")
    bad = sum(ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f") for ch in text)
    return text if bad <= len(text) * 0.02 else None  # a character cut at the 4 KiB edge is allowed


def _looks_like_mp4(head: bytes, size: int) -> bool:
    """An ISO-BMFF file starts with `ftyp`; old QuickTime files may open with another top-level box instead."""
    if len(head) < 8:
        return False
    if head[4:8] == b"ftyp":
        return True
    first = int.from_bytes(head[:4], "big")
    return head[4:8] in _MP4_TOP_BOXES and 8 <= first <= size and _as_text(head) is None


def _mp4_problem(path: Path, size: int) -> str | None:
    """Walk the top-level boxes: no `moov` (the index of every sample) means FFmpeg can play nothing."""
    seen: list[str] = []  # top-level boxes before the end
    offset = 0
    with path.open("rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) >= 16:  # a 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - offset
            if box_size < 8:
                return None  # not a box: corrupt, which the caller's own message covers
            if box_type == b"moov":
                return None
            seen.append(box_type.decode("latin-1"))
            if offset + box_size > size:
                return (f"an MP4 without its index (moov atom missing), cut off inside its {seen[-1]!r} box "
                        f"({offset + box_size - size} bytes short): incomplete download?")
            offset += box_size
    return _NO_MOOV if seen else None


_NO_MOOV = "an MP4 without its index (moov atom missing): incomplete download?"


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
