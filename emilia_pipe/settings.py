"""From settings (model set, stages, device, Emilia's numbers) to a `PipeConfig`, shared by the CLI and Dagster.

Importing this module stays cheap (the Dagster code location reads `ALL_STAGES` from it): the stage modules, which
import torch, faster-whisper and onnxruntime, load only when `build_pipe_config` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from emilia_pipe.models import ModelSet, resolve_file

if TYPE_CHECKING:
    from emilia_pipe.pipeline import PipeConfig
    from emilia_pipe.segmentation import SegmentationRules
    from emilia_pipe.vad import VadConfig

ALL_STAGES = ("separate", "diarize", "asr", "dnsmos")
T = TypeVar("T")


class SettingError(ValueError):
    """A setting from the environment that cannot be used; the message names the variable and its value."""


def env_number(name: str, default: T, kind: Callable[[str], float] = int, minimum: float = 1) -> float | T:
    """A number setting from the environment (`default` when unset or empty). Anything that is not a `kind` of at
    least `minimum` is an error naming the variable and the value, so a typo in a pod's env fails at start, loudly."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    what = f"{'an integer' if kind is int else 'a number'} >= {minimum:g}"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r}: expected {what}") from None
    if not value >= minimum:  # also refuses nan
        raise SettingError(f"{name}={raw!r}: expected {what}")
    return value


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_pipe_config(
    models: ModelSet,
    stages: tuple[str, ...] | list[str] = ALL_STAGES,
    device: str = "auto",
    hf_token: str | None = None,
    whisper_model: str = "",
    asr_batch_size: int = 16,
    asr_language: str | None = None,
    asr_detect_per: str = "episode",
    asr_beam_size: int = 5,
    asr_word_timestamps: bool = False,
    asr_initial_prompt: str | None = None,
    asr_supported_languages: tuple[str, ...] | None = None,
    asr_min_language_probability: float = 0.5,
    asr_max_new_tokens: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    separation_chunk_s: float = 30.0,
    target_dbfs: float = -20.0,
    mp3_bitrate_kbps: int = 64,
    vad: VadConfig | None = None,
    rules: SegmentationRules | None = None,
) -> PipeConfig:
    """Per-stage devices can be overridden by `SEPARATION_DEVICE` and `DNSMOS_DEVICE` (the seed's names); the ONNX
    stages' execution by `SEPARATION_BACKEND` / `DNSMOS_BACKEND` (onnxruntime | torch | auto) and
    `SEPARATION_PRECISION` / `DNSMOS_PRECISION` (float32 | float16 | auto); pyannote's batches by
    `DIARIZATION_SEGMENTATION_BATCH` / `DIARIZATION_EMBEDDING_BATCH`."""
    # Here, not at the top: these modules are the ML runtime. ASR first, as the pipeline module imports them.
    from emilia_pipe.asr import AsrConfig
    from emilia_pipe.diarization import DiarizationConfig
    from emilia_pipe.dnsmos import DnsmosConfig
    from emilia_pipe.pipeline import PipeConfig
    from emilia_pipe.segmentation import SegmentationRules
    from emilia_pipe.separation import SeparationConfig
    from emilia_pipe.vad import VadConfig

    unknown = set(stages) - set(ALL_STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {ALL_STAGES}")
    device = default_device() if device == "auto" else device
    on = set(stages)
    separation = diarization = asr = dnsmos = None
    if "separate" in on:
        separation = SeparationConfig(
            model_path=resolve_file(models.separation, token=hf_token),
            chunk_s=separation_chunk_s,
            device=os.environ.get("SEPARATION_DEVICE") or device,
            backend=os.environ.get("SEPARATION_BACKEND") or "auto",
            precision=os.environ.get("SEPARATION_PRECISION") or "auto",
            batch_windows=env_number("SEPARATION_BATCH_WINDOWS", 4),
        )
    if "diarize" in on:
        diarization = DiarizationConfig(model=models.diarization, hf_token=hf_token, device=device,
                                        min_speakers=min_speakers, max_speakers=max_speakers,
                                        segmentation_batch_size=env_number("DIARIZATION_SEGMENTATION_BATCH", None),
                                        embedding_batch_size=env_number("DIARIZATION_EMBEDDING_BATCH", None))
    if "asr" in on:
        asr = AsrConfig(
            model=whisper_model or models.whisper,
            device=device,
            batch_size=asr_batch_size,
            language=asr_language or None,
            detect_per=asr_detect_per,
            beam_size=asr_beam_size,
            word_timestamps=asr_word_timestamps,
            initial_prompt=asr_initial_prompt or None,
            min_language_probability=asr_min_language_probability,
            max_new_tokens=asr_max_new_tokens,
            **({"supported_languages": tuple(asr_supported_languages)} if asr_supported_languages else {}),
        )
    if "dnsmos" in on:
        dnsmos = DnsmosConfig(
            sig_bak_ovr_path=resolve_file(models.dnsmos_sig_bak_ovr),
            p808_path=resolve_file(models.dnsmos_p808) if models.dnsmos_p808 else None,
            device=os.environ.get("DNSMOS_DEVICE") or device,
            backend=os.environ.get("DNSMOS_BACKEND") or "auto",
            precision=os.environ.get("DNSMOS_PRECISION") or "auto",
            batch_size=env_number("DNSMOS_BATCH_SIZE", 16),
        )
    from emilia_pipe.provenance import pipe_provenance

    return PipeConfig(
        provenance=pipe_provenance(models, list(stages), whisper_model),
        target_dbfs=target_dbfs,
        mp3_bitrate_kbps=mp3_bitrate_kbps,
        vad=vad or VadConfig(),
        rules=rules or SegmentationRules(),
        separation=separation,
        diarization=diarization,
        asr=asr,
        dnsmos=dnsmos,
    )
