"""Production-size random-weight models (`emilia-forge models tiny --full-size`), tested here through the same code
with scaled-down dimensions: the full ones are built on the GPU machine at measurement time (Whisper large-v3 alone
is 3.1 GB).

What is checked at full size without running it: the MDX-Net's parameter count (so its file size) against
UVR-MDX-NET-Inst_HQ_3's 66.8 MB, within 20 %, and its FLOPs per window as stated in `emilia_pipe.tiny.mdx_net`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emilia_pipe import audio as audio_io
from emilia_pipe.onnx_torch import OnnxTorchModel
from emilia_pipe.separation import MdxSeparator, SeparationConfig
from emilia_pipe.tiny import mdx_net
from emilia_pipe.tiny import whisper as tiny_whisper
from tests.shared_models import SHARED_MODELS, needs_shared_models

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SMALL_MDX = mdx_net.MdxNetShape(g=4, num_blocks=5)
SMALL_V3 = replace(tiny_whisper.LARGE_V3, d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=4,
                   ffn_dim=256)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((other.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise))


def test_the_inst_hq3_shaped_mdx_net_matches_the_real_file_size_and_contract(tmp_path):
    shape = mdx_net.MdxNetShape()
    assert (shape.dim_f, shape.dim_t, shape.g, shape.num_blocks, shape.l, shape.bn) == (3072, 256, 48, 11, 3, 8)
    path = mdx_net.build(tmp_path / "mdx.onnx", shape)
    size = path.stat().st_size
    assert abs(size - mdx_net.REAL_FILE_BYTES) <= 0.2 * mdx_net.REAL_FILE_BYTES, size
    assert abs(size - 4 * mdx_net.parameters(shape)) < 0.01 * size  # the file is its float32 parameters
    assert mdx_net.flops_per_window(shape) == pytest.approx(0.759e12, rel=0.01)  # the figure the docstring states
    info = mdx_net.describe(shape, path)
    assert info["file_bytes"] == size and info["gflops_per_window"] == pytest.approx(758.9, abs=0.1)
    # the separator's contract, checked at load by both backends
    assert MdxSeparator(SeparationConfig(str(path), backend="onnxruntime")).batch == 4
    assert MdxSeparator(SeparationConfig(str(path), backend="torch")).model.input_shapes["input"] == [
        "batch", 4, 3072, 256]


def test_the_stated_flops_are_what_torch_counts(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    model = OnnxTorchModel(mdx_net.build(tmp_path / "small.onnx", SMALL_MDX))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 4, 3072, 256))
    assert counter.get_total_flops() == mdx_net.flops_per_window(SMALL_MDX)


@pytest.mark.parametrize(("precision", "min_snr_db"), [("float32", 80.0), ("float16", 35.0)])
def test_a_scaled_down_mdx_net_runs_the_same_on_both_backends(tmp_path, precision, min_snr_db):
    """The instrumental (what the model contributes: mix minus vocals) against ONNX Runtime's float32 one.

    Measured: 118 dB in float32, 50 dB in float16 (float16 convolutions are slow on CPU: 4 s of audio)."""
    path = str(mdx_net.build(tmp_path / "small.onnx", SMALL_MDX))
    mix = audio_io.decode(SAMPLES / "music_bed.mp3", 24_000)[: 4 * 24_000]
    reference = mix - MdxSeparator(SeparationConfig(path, backend="onnxruntime")).vocals(mix, 24_000)
    assert np.sqrt(np.mean(reference**2)) > 0.1 * np.sqrt(np.mean(mix**2))  # the model does take something out
    ours = mix - MdxSeparator(SeparationConfig(path, backend="torch", precision=precision)).vocals(mix, 24_000)
    assert snr_db(reference, ours) >= min_snr_db


def test_a_scaled_down_large_v3_whisper_has_its_vocabulary_mels_and_runs(tmp_path):
    from emilia_pipe.asr import AsrConfig, WhisperAsr

    out = tiny_whisper.build(tmp_path / "whisper", tiny_whisper.fetch_tiktoken(), shape=SMALL_V3,
                             quantization="float16")
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 128
    asr = WhisperAsr(AsrConfig(model=str(out), device="cpu", language="en", beam_size=1, temperature=0.0))
    assert asr.model.model.n_mels == 128
    assert asr.languages[-1] == "yue" and len(asr.languages) == 100
    assert asr.model.hf_tokenizer.get_vocab_size() == SMALL_V3.vocab_size == 51_866
    speech = audio_io.decode(SAMPLES / "monologue.mp3", 16_000)[: 8 * 16_000]
    transcripts = asr.transcribe(speech, 16_000, [(0.0, 4.0), (4.0, 8.0)])
    assert [t.keep for t in transcripts] == [True, True]
    assert tiny_whisper.LARGE_V3.vocab_size == 51_866 and tiny_whisper.LARGE_V3.num_mel_bins == 128


@needs_shared_models("dnsmos/sig_bak_ovr.onnx", "dnsmos/model_v8.onnx")
def test_the_full_size_set_builds_through_the_production_loaders(tmp_path):
    from emilia_pipe.models import ModelSet, full_size
    from emilia_pipe.pipeline import EmiliaPipeline
    from emilia_pipe.settings import build_pipe_config

    models = full_size(tmp_path / "models", SHARED_MODELS / "dnsmos", whisper_shape=SMALL_V3, mdx_shape=SMALL_MDX)
    assert models.kind == "full-size" and ModelSet.load(tmp_path / "models") == models
    config = yaml.safe_load((Path(models.diarization) / "config.yaml").read_text())
    assert config["pipeline"]["params"]["segmentation_step"] == 0.1  # community-1's production step
    sizes = json.loads((tmp_path / "models" / "model_sizes.json").read_text())
    assert sizes["separation"]["parameters"] == mdx_net.parameters(SMALL_MDX)
    assert sizes["whisper"]["shape"]["num_mel_bins"] == 128 and sizes["dnsmos"]["real"] is True
    pipeline = EmiliaPipeline(build_pipe_config(models, device="cpu", asr_language="en", asr_beam_size=1))
    assert pipeline.runtime_devices() == {"vad": "cpu", "separate": "cpu", "dnsmos": "cpu", "asr": "cpu",
                                         "diarize": "cpu"}
    assert pipeline.asr.model.model.n_mels == 128


def test_full_size_needs_the_real_dnsmos(tmp_path):
    from emilia_pipe.models import full_size

    with pytest.raises(FileNotFoundError, match="full-size models need the real DNSMOS files"):
        full_size(tmp_path / "models", tmp_path / "nowhere")
