"""The Emilia pipe as a Dagster resource: which models, which stages, which device. The pipelines themselves are
built by the batch runner's workers (`emilia_pipe.pool`), one per worker process, from `pipe_config()`.

The ML stack (torch, faster-whisper, onnxruntime, pyannote) is imported only when a run asks for the config:
loading the code location (code servers, sensors, schedules, the UI, ingest and publish runs) never pays for it.
`tests/unit/test_definitions_light.py` holds this line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from emilia_pipe.segmentation import SegmentationRules
from emilia_pipe.settings import ALL_STAGES

if TYPE_CHECKING:
    from emilia_pipe.pipeline import PipeConfig

_RULES = SegmentationRules()  # Emilia's numbers, defined once (emilia_pipe.segmentation)


class EmiliaPipeResource(dg.ConfigurableResource):
    """Settings of every stage; the defaults are Emilia's. Secrets (HF_TOKEN) come in through `dg.EnvVar`."""

    models_dir: str = Field(default="", description="EMILIA_MODELS_DIR: a folder with models.json (fetch or tiny).")
    stages: list[str] = Field(default=list(ALL_STAGES), description=f"Optional stages to run, of {ALL_STAGES}.")
    device: str = Field(default="auto", description="cuda | cuda:N | cpu | auto (cuda when present).")
    hf_token: str = Field(default="", description="HF_TOKEN, for gated pyannote models.")
    whisper_model: str = Field(default="", description="WHISPER_MODEL: overrides the model set's Whisper.")
    asr_batch_size: int = Field(default=16, description="BATCH_SIZE: segments per batched Whisper call.")
    asr_language: str = Field(default="", description="ASR_LANGUAGE: force a language, skipping detection.")
    asr_detect_per: str = Field(default="episode", description="Language detection per 'episode' or 'segment'.")
    asr_beam_size: int = 5
    asr_word_timestamps: bool = Field(default=False, description="Word-level timestamps in all_segments.json.")
    asr_initial_prompt: str = Field(default="", description="Whisper initial prompt (style, names).")
    asr_supported_languages: list[str] = Field(default=[], description="Languages kept; empty = Emilia's six.")
    asr_min_language_probability: float = Field(default=0.5, description="Below this, a segment is dropped.")
    min_speakers: int | None = Field(default=None, description="Diarization lower bound on speakers per episode.")
    max_speakers: int | None = Field(default=None, description="Diarization upper bound on speakers per episode.")
    separation_chunk_s: float = Field(default=30.0, description="SEPARATION_CHUNKS: seconds per separation chunk.")
    target_dbfs: float = Field(default=-20.0, description="Loudness target of the speech, dBFS RMS.")
    mp3_bitrate_kbps: int = Field(default=64, description="Segment MP3 bitrate; 64 kbps keeps the band to ~11 kHz.")
    vad_threshold: float = 0.5
    min_segment_s: float = _RULES.min_s
    max_segment_s: float = _RULES.max_s
    split_above_s: float = _RULES.split_above_s
    merge_gap_s: float = _RULES.merge_gap_s

    def segmentation_rules(self) -> SegmentationRules:
        """The rules the pipe segments by; the durations check of processed_segments reads its bounds here."""
        return SegmentationRules(min_s=self.min_segment_s, max_s=self.max_segment_s,
                                 split_above_s=self.split_above_s, merge_gap_s=self.merge_gap_s)

    def pipe_config(self, device: str | None = None) -> PipeConfig:
        """`device` overrides the setting: a pooled worker is pinned to one GPU, which it sees as `cuda`."""
        from emilia_pipe.models import ModelSet
        from emilia_pipe.settings import build_pipe_config
        from emilia_pipe.vad import VadConfig

        return build_pipe_config(
            ModelSet.load(self.models_dir) if self.models_dir else ModelSet(),
            stages=self.stages,
            device=device or self.device,
            hf_token=self.hf_token or None,
            whisper_model=self.whisper_model,
            asr_batch_size=self.asr_batch_size,
            asr_language=self.asr_language or None,
            asr_detect_per=self.asr_detect_per,
            asr_beam_size=self.asr_beam_size,
            asr_word_timestamps=self.asr_word_timestamps,
            asr_initial_prompt=self.asr_initial_prompt or None,
            asr_supported_languages=tuple(self.asr_supported_languages) or None,
            asr_min_language_probability=self.asr_min_language_probability,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
            separation_chunk_s=self.separation_chunk_s,
            target_dbfs=self.target_dbfs,
            mp3_bitrate_kbps=self.mp3_bitrate_kbps,
            vad=VadConfig(threshold=self.vad_threshold),
            rules=self.segmentation_rules(),
        )
