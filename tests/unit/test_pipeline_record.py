"""all_segments.json records what ran on the episode, not what the config lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from emilia_pipe.models import ModelSet
from emilia_pipe.pipeline import EmiliaPipeline, removed_db
from emilia_pipe.settings import build_pipe_config


def test_an_episode_without_speech_records_no_asr_or_dnsmos(tmp_path: Path, tiny_models: Path) -> None:
    config = build_pipe_config(ModelSet.load(str(tiny_models)), stages=["separate", "asr", "dnsmos"],
                               device="cpu", asr_language="en", asr_beam_size=1)
    assert config.stages == ["standardize", "separate", "vad", "asr", "dnsmos", "export"]
    noise = np.random.default_rng(0).standard_normal(6 * 24_000).astype(np.float32) * 0.01  # no speech in it
    sf.write(tmp_path / "hiss.wav", noise, 24_000)

    result = EmiliaPipeline(config).process(tmp_path / "hiss.wav", "hiss", tmp_path / "out", language_hint="en")

    episode = json.loads((tmp_path / "out/all_segments.json").read_text())["episode"]
    assert result.segments == []
    assert episode["stages"] == list(episode["stage_seconds"]) == ["standardize", "separate", "vad", "export"]
    assert all(t > 0 for t in episode["stage_seconds"].values())
    assert -120.0 < episode["separation_removed_db"] <= 20.0


def test_removed_level_of_separation() -> None:
    mix = np.random.default_rng(1).standard_normal(50_000).astype(np.float32)
    assert removed_db(mix, mix) == -120.0  # a separator that returned the mix
    assert removed_db(mix, np.zeros_like(mix)) == 0.0  # everything removed
    assert removed_db(mix, mix * 0.9, chunk=7_000) == -20.0  # a tenth of the amplitude removed, summed in chunks
    assert removed_db(np.zeros(10, np.float32), np.zeros(10, np.float32)) == -120.0
