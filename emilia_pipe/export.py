"""Write an episode's segments: one MP3 per segment and `all_segments.json`, written last.

MP3s are encoded with LAME (lameenc) at 24 kHz mono. The default 64 kbps keeps the band up to ~11 kHz; ffmpeg's
default 32 kbps low-passes near 8.5 kHz and loses the sibilance TTS models need.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lameenc
import numpy as np

ALL_SEGMENTS = "all_segments.json"
EXPORT_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class Segment:
    id: str
    start: float
    end: float
    speaker: str
    language: str
    text: str = ""
    language_probability: float | None = None
    dnsmos: dict[str, float] | None = None
    words: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 3)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        if d["words"] is None:
            d.pop("words")
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        d["duration"] = self.duration
        d["wav"] = f"{self.id}.mp3"
        d.update(self.extra)
        return d


def encode_mp3(audio: np.ndarray, sample_rate: int, bitrate_kbps: int = 64) -> bytes:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    enc = lameenc.Encoder()
    enc.set_bit_rate(bitrate_kbps)
    enc.set_in_sample_rate(sample_rate)
    enc.set_out_sample_rate(sample_rate)
    enc.set_channels(1)
    enc.set_quality(2)  # 2 = high quality, 7 = fast
    return bytes(enc.encode(pcm.tobytes()) + enc.flush())


def write_segments(
    out_dir: Path, audio: np.ndarray, sample_rate: int, segments: Iterable[Segment], bitrate_kbps: int = 64
) -> list[Path]:
    """One MP3 per segment, encoded on several threads (LAME runs outside the GIL)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    segments = list(segments)

    def encode(seg: Segment) -> Path:
        clip = audio[int(round(seg.start * sample_rate)) : int(round(seg.end * sample_rate))]
        path = out_dir / f"{seg.id}.mp3"
        path.write_bytes(encode_mp3(clip, sample_rate, bitrate_kbps))
        return path

    with ThreadPoolExecutor(max_workers=max(1, min(EXPORT_THREADS, len(segments)))) as pool:
        return list(pool.map(encode, segments))


def write_index(out_dir: Path, segments: Iterable[Segment], episode: dict[str, Any]) -> Path:
    """`all_segments.json`; written after the MP3s, its presence means the directory is complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"episode": episode, "segments": [s.to_json() for s in segments]}
    path = out_dir / ALL_SEGMENTS
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
    return path


def write_episode(
    out_dir: Path,
    audio: np.ndarray,
    sample_rate: int,
    segments: Iterable[Segment],
    episode: dict[str, Any],
    bitrate_kbps: int = 64,
) -> list[Path]:
    """MP3s first, `all_segments.json` last."""
    segments = list(segments)
    files = write_segments(out_dir, audio, sample_rate, segments, bitrate_kbps)
    return [*files, write_index(out_dir, segments, episode)]
