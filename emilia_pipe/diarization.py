"""Speaker diarization with pyannote.audio 4: mono audio in, non-overlapping speaker turns out.

The default model is `pyannote/speaker-diarization-community-1`, not Emilia's `speaker-diarization-3.1`. Under
pyannote 4, `SpeakerDiarization` loads a PLDA whatever the clustering, and 3.1's config.yaml names none, so 3.1
silently fetches community-1's PLDA from the Hub at load time: it needs community-1's gated access anyway, and a
folder cached from 3.1 cannot load offline. community-1 is the pipeline pyannote 4 ships (VBx clustering, a
self-contained repo: segmentation, embedding and PLDA as `$model/...` subfolders), and pyannote reports lower
diarization error than 3.1 on its benchmarks. A local folder with a config.yaml works the same way (a cached copy, or
`emilia_pipe.tiny.pyannote` in tests).

We use pyannote's *exclusive* diarization: one speaker at a time, overlapped speech given to the most likely one.
Emilia cuts one speaker's segments; an overlapping turn would put the same audio in two segments.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emilia_pipe.audio import resample
from emilia_pipe.segmentation import Span

if TYPE_CHECKING:
    from pyannote.core import Annotation

log = logging.getLogger(__name__)

PYANNOTE_SR = 16_000  # every pyannote 3/4 model runs at 16 kHz
DEFAULT_MODEL = "pyannote/speaker-diarization-community-1"


@dataclass(frozen=True)
class DiarizationConfig:
    """Which pipeline to load and how to run it.

    `model` is a Hugging Face id or a local folder holding a pyannote config.yaml. `hf_token` is only needed for
    gated Hub models (None falls back to huggingface_hub's own HF_TOKEN / login lookup); it is kept out of repr so a
    logged config never shows it. `min_speakers` / `max_speakers` bound the number of speakers per episode.
    """

    model: str = DEFAULT_MODEL
    hf_token: str | None = field(default=None, repr=False)
    device: str = "cpu"
    min_speakers: int | None = None
    max_speakers: int | None = None
    segmentation_batch_size: int | None = None
    embedding_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_speakers", "max_speakers", "segmentation_batch_size", "embedding_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers {self.min_speakers} > max_speakers {self.max_speakers}")


def _import_pyannote_pipeline() -> Any:
    """Import pyannote's Pipeline with telemetry off and torch's thread count as it was.

    pyannote 4 sends usage metrics (model origin, audio duration, speaker counts) to pyannoteAI unless
    PYANNOTE_METRICS_ENABLED is false; it reads the variable on every call, so setting it here also covers an
    earlier import. Some audio libraries change torch's global thread count on import (silero_vad sets 1), which
    would slow every later stage in the process, so we put it back.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    import torch

    threads = torch.get_num_threads()
    from pyannote.audio import Pipeline

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return Pipeline


class PyannoteDiarizer:
    """Loads a pyannote speaker-diarization pipeline once and turns episodes into speaker turns."""

    def __init__(self, config: DiarizationConfig):
        import torch

        self.config = config
        Pipeline = _import_pyannote_pipeline()
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"diarization device {config.device!r} requested but CUDA is not available")
        local = Path(config.model).expanduser()
        model = str(local) if local.is_dir() else config.model  # a folder loads from disk, anything else from the Hub
        log.info("loading diarization pipeline %s on %s", model, device)
        pipeline = Pipeline.from_pretrained(model, token=config.hf_token)
        if pipeline is None:  # pyannote returns None when the Hub refuses the download
            raise RuntimeError(
                f"could not load diarization pipeline {model!r}: a gated model needs HF_TOKEN and its user "
                "conditions accepted on huggingface.co"
            )
        if config.segmentation_batch_size is not None:
            pipeline.segmentation_batch_size = config.segmentation_batch_size
        if config.embedding_batch_size is not None:
            pipeline.embedding_batch_size = config.embedding_batch_size
        self.pipeline = pipeline.to(device)

    @property
    def runtime_device(self) -> str:
        """Where the pipeline's models really are ("cuda" / "cpu"), read back from pyannote."""
        return str(getattr(self.pipeline, "device", "unknown")).split(":")[0]

    @property
    def runtime(self) -> str:
        p = self.pipeline
        seg, emb = getattr(p, "segmentation_batch_size", "?"), getattr(p, "embedding_batch_size", "?")
        return (f"torch on {getattr(p, 'device', 'unknown')}, segmentation batch {seg}, embedding batch {emb}, "
                f"step {getattr(p, 'segmentation_step', '?')}")

    def turns(self, audio: np.ndarray, sample_rate: int, episode_id: str) -> list[Span]:
        """Speaker turns of a mono episode, sorted by start and non-overlapping, clipped to the audio.

        Speakers are named `<episode_id>_S00`, `_S01`, ... in order of first appearance: unique across episodes
        (pyannote's SPEAKER_00 means nothing outside one file) and stable for the same output.
        """
        import torch

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        # Clip to the caller's timeline: resampling can round the length up by a fraction of a sample.
        duration_s = audio.size / sample_rate
        audio = resample(audio, sample_rate, PYANNOTE_SR)
        if audio.size < 2:  # pyannote rejects a (1, n) waveform with n < 2 as having its axes swapped
            return []
        waveform = torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0)
        output = self.pipeline(
            {"waveform": waveform, "sample_rate": PYANNOTE_SR, "uri": episode_id},
            min_speakers=self.config.min_speakers,
            max_speakers=self.config.max_speakers,
        )
        # A pipeline configured with `legacy: true` returns the Annotation alone (overlapping turns).
        annotation = getattr(output, "exclusive_speaker_diarization", output)
        return _to_spans(annotation, duration_s, episode_id)


def _to_spans(annotation: Annotation, duration_s: float, episode_id: str) -> list[Span]:
    """Sorted, clipped, non-overlapping spans with episode-scoped speaker ids.

    Exclusive diarization does not overlap, but turns are cut from frame timestamps and clipped here, so any
    residual overlap with the previous turn (or a legacy pipeline's real overlap) is trimmed off the later turn.
    """
    tracks = sorted(
        ((float(seg.start), float(seg.end), str(label)) for seg, _, label in annotation.itertracks(yield_label=True)),
        key=lambda t: (t[0], t[1], t[2]),
    )
    names: dict[str, str] = {}
    spans: list[Span] = []
    last_end = 0.0
    for start, end, label in tracks:
        start, end = max(start, last_end, 0.0), min(end, duration_s)
        if end <= start:
            continue
        if label not in names:
            names[label] = f"{episode_id}_S{len(names):02d}"
        spans.append(Span(start, end, names[label]))
        last_end = end
    return spans
