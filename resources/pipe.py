"""The Emilia pipe as a Dagster resource: its settings, and one pipeline per worker process."""


import functools

import dagster as dg
from pydantic import Field

from emilia_pipe.pipeline import EmiliaPipeline, PipeConfig
from emilia_pipe.segmentation import SegmentationRules
from emilia_pipe.vad import VadConfig


@functools.lru_cache(maxsize=4)
def _pipeline(config: PipeConfig) -> EmiliaPipeline:
    # Models load once per process and config, then serve every episode of every batch this worker runs.
    return EmiliaPipeline(config)


class EmiliaPipeResource(dg.ConfigurableResource):
    """Settings of every stage; the defaults are Emilia's."""

    target_dbfs: float = Field(default=-20.0, description="Loudness target of the speech, dBFS RMS.")
    mp3_bitrate_kbps: int = Field(default=64, description="Segment MP3 bitrate; 64 kbps keeps the band to ~11 kHz.")
    vad_threshold: float = 0.5
    min_segment_s: float = 3.0
    max_segment_s: float = 30.0
    split_above_s: float = 20.0
    merge_gap_s: float = 2.0

    def pipe_config(self) -> PipeConfig:
        return PipeConfig(
            target_dbfs=self.target_dbfs,
            mp3_bitrate_kbps=self.mp3_bitrate_kbps,
            vad=VadConfig(threshold=self.vad_threshold),
            rules=SegmentationRules(
                min_s=self.min_segment_s,
                max_s=self.max_segment_s,
                split_above_s=self.split_above_s,
                merge_gap_s=self.merge_gap_s,
            ),
        )

    def pipeline(self) -> EmiliaPipeline:
        return _pipeline(self.pipe_config())
