"""MDX separation: chunking leaves no seam, the framing is exact, and the output keeps the caller's format.

All tests run the real code path (ONNX Runtime on CPU, torch STFT, soxr) against the random-weight stand-in from
`emilia_pipe.tiny.mdx`, which has the production model's input/output contract.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import soxr
from onnx import TensorProto, helper, numpy_helper

from emilia_pipe import audio as audio_io
from emilia_pipe.devices import CPU_EP
from emilia_pipe.separation import (
    DIM_F,
    DIM_T,
    MODEL_SR,
    MdxSeparator,
    SeparationConfig,
    cuda_provider_options_from_env,
)
from emilia_pipe.tiny import mdx as tiny_mdx

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SR = audio_io.TARGET_SR  # the rate the pipeline hands to the separator


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_mdx.build(tmp_path_factory.mktemp("mdx") / "tiny_mdx.onnx"))


@pytest.fixture(scope="session")
def scaled_models(tmp_path_factory: pytest.TempPathFactory) -> dict[float, str]:
    """Models that return `scale * input`: 1 = the instrumental is the whole mix, 0 = there is no instrumental."""
    directory = tmp_path_factory.mktemp("mdx_scaled")
    shape = ["batch", 4, DIM_F, DIM_T]
    paths = {}
    for scale in (0.0, 1.0):
        graph = helper.make_graph(
            [helper.make_node("Mul", ["input", "scale"], ["output"])],
            "scaled",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
            initializer=[numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        paths[scale] = str(directory / f"scale_{scale:g}.onnx")
        onnx.save(model, paths[scale])
    return paths


def _episode(seconds: float, sample_rate: int = SR) -> np.ndarray:
    """A bundled sample (speech over a music bed) tiled to `seconds`, plus noise and a gliding tone.

    The tone and noise make every chunk border land in content that differs from the one before it, so a seam
    could not hide in a repeat of the tiled file.
    """
    speech = audio_io.decode(SAMPLES / "music_bed.mp3", sample_rate=sample_rate)
    n = int(seconds * sample_rate)
    x = np.resize(speech, n).astype(np.float64)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(7)
    x += 0.02 * rng.standard_normal(n)
    x += 0.05 * np.sin(2 * np.pi * (300 * t + 40 * np.sin(2 * np.pi * t / 17)))
    return x.astype(np.float32)


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((other.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)


def test_chunked_equals_one_piece_on_five_minutes(tiny_model: str) -> None:
    """30 s chunks with a 1 s cross-fade give the one-piece result: no seam at any of the ten chunk borders.

    Tolerance: SNR of the difference > 90 dB and max |diff| < 1e-5 (signal peak ~0.5). By construction both runs
    apply the same model windows to the same samples, so what differs is float32 rounding (the cross-fade's
    w*x + (1-w)*x; ORT kernels that may vary with batch size): measured 152 dB, max 7e-8 on this input. A seam is
    far below the bar: with this stand-in, independent 30 s chunks cross-faded over 1 s (Amphion's scheme plus a
    fade) measured 31 dB, and a window grid moved by 1000 samples 29 dB. The issue's suggested 40 dB would pass
    those; 90 dB does not, while leaving 60 dB for rounding on other CPUs.
    """
    x = _episode(300.0)
    chunked = MdxSeparator(SeparationConfig(tiny_model, chunk_s=30.0, overlap_s=1.0)).vocals(x, SR)
    one_piece = MdxSeparator(SeparationConfig(tiny_model, chunk_s=400.0, overlap_s=0.0)).vocals(x, SR)
    max_diff = float(np.max(np.abs(chunked - one_piece)))
    snr = _snr_db(one_piece, chunked)
    logging.getLogger(__name__).info("chunked vs one-piece: max |diff| %.3g, SNR %.1f dB", max_diff, snr)
    assert snr > 90.0, f"SNR {snr:.1f} dB, max |diff| {max_diff:.3g}"
    assert max_diff < 1e-5
    # The stand-in does separate something: vocals are neither silence nor the mix.
    assert 0.2 < np.std(one_piece) / np.std(x) < 0.8


@pytest.mark.parametrize("sample_rate", [16_000, SR, MODEL_SR, 48_000])
@pytest.mark.parametrize("seconds", [0.0, 1 / 16_000, 0.01, 7.3])
def test_output_keeps_length_dtype_and_rate(tiny_model: str, sample_rate: int, seconds: float) -> None:
    """Length, dtype and (so) rate of the input survive, from one sample to several windows, float64 input too."""
    n = round(seconds * sample_rate)
    x = np.random.default_rng(n).standard_normal(n) * 0.1  # float64 on purpose
    out = MdxSeparator(SeparationConfig(tiny_model, chunk_s=3.0, overlap_s=0.5)).vocals(x, sample_rate)
    assert out.dtype == np.float32
    assert out.shape == (n,)
    assert np.all(np.isfinite(out))


def test_framing_is_exact(scaled_models: dict[float, str]) -> None:
    """A model that calls everything instrumental leaves ~no vocals; one that calls nothing instrumental returns
    the mix (through the same 24 -> 44.1 -> 24 kHz resampling as soxr's one-shot calls).

    Catches what the stand-in cannot: an off-by-one window placement, tapers that do not sum to one, a wrong
    real/imag order, or a streaming resampler that drops or repeats samples.
    """
    x = _episode(40.0)
    config = {"chunk_s": 9.0, "overlap_s": 1.5}
    none_left = MdxSeparator(SeparationConfig(scaled_models[1.0], **config)).vocals(x, SR)
    assert _snr_db(x, x - none_left) > 80.0  # residual only from dropping the Nyquist bin and rounding
    all_vocals = MdxSeparator(SeparationConfig(scaled_models[0.0], **config)).vocals(x, SR)
    round_trip = soxr.resample(soxr.resample(x, SR, MODEL_SR, quality="HQ"), MODEL_SR, SR, quality="HQ")
    np.testing.assert_allclose(all_vocals, round_trip[: x.size], atol=1e-6)


def test_each_window_runs_once_and_memory_holds_one_chunk(
    scaled_models: dict[float, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No window is computed twice across chunk borders, and no chunk holds more than its own windows.

    The memory bound in code form (the benchmark measures it in bytes): what a chunk holds does not grow with
    the episode.
    """
    from emilia_pipe import separation

    ran: list[int] = []
    held: list[int] = []
    original = separation.MdxSeparator._instrumental

    def spy(self: MdxSeparator, source: object, start: int, end: int, done: dict[int, np.ndarray]) -> np.ndarray:
        out = original(self, source, start, end, done)
        held.append(len(done))
        return out

    def count(self: MdxSeparator, frames: np.ndarray) -> np.ndarray:
        ran.append(frames.shape[0])
        return np.zeros_like(frames)

    monkeypatch.setattr(separation.MdxSeparator, "_instrumental", spy)
    monkeypatch.setattr(separation.MdxSeparator, "_run_windows", count)
    chunk_s = 10.0
    x = np.zeros(MODEL_SR * 120, dtype=np.float32)
    MdxSeparator(SeparationConfig(scaled_models[0.0], chunk_s=chunk_s, overlap_s=1.0)).vocals(x, MODEL_SR)
    assert sum(ran) == len(separation._windows_touching(0, x.size))
    per_chunk = int(np.ceil((chunk_s * MODEL_SR + separation.RAMP) / separation.STEP)) + 1
    assert len(held) == 14  # chunks start every 9 s: 0, 9, ..., 117
    assert max(held) <= per_chunk


def test_denoise_runs_and_differs(tiny_model: str) -> None:
    """The denoise pass, (-f(-x) + f(x)) / 2, is a different result (the stand-in is not an odd function)."""
    x = _episode(12.0)
    plain = MdxSeparator(SeparationConfig(tiny_model, chunk_s=5.0)).vocals(x, SR)
    denoised = MdxSeparator(SeparationConfig(tiny_model, chunk_s=5.0, denoise=True)).vocals(x, SR)
    assert denoised.shape == plain.shape and denoised.dtype == np.float32
    assert np.all(np.isfinite(denoised))
    assert np.max(np.abs(denoised - plain)) > 1e-3
    assert _snr_db(plain, denoised) > 10.0  # a variant of the same separation, not another signal


def test_cuda_options_read_the_environment() -> None:
    env = {
        "ORT_CUDA_MEM_LIMIT_GB": "6.5",
        "ORT_CUDA_ARENA_EXTEND_STRATEGY": "kSameAsRequested",
        "ORT_CUDNN_CONV_ALGO_SEARCH": "heuristic",
        "ORT_CUDNN_USE_MAX_WORKSPACE": "true",
    }
    assert cuda_provider_options_from_env(env, device_id=1) == {
        "device_id": 1,
        "gpu_mem_limit": int(6.5 * 1024**3),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "1",
    }
    fraction = {"ORT_CUDA_MEM_LIMIT_FRACTION": "0.25", "ORT_CUDNN_USE_MAX_WORKSPACE": "0"}
    assert cuda_provider_options_from_env(fraction, total_memory_bytes=80 * 10**9) == {
        "device_id": 0,
        "gpu_mem_limit": 20 * 10**9,
        "cudnn_conv_use_max_workspace": "0",
    }
    assert cuda_provider_options_from_env({"ORT_CUDA_MEM_LIMIT_GB": " "}) == {"device_id": 0}  # empty = unset


def test_cuda_options_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORT_CUDA_ARENA_EXTEND_STRATEGY", "kNextPowerOfTwo")
    assert cuda_provider_options_from_env()["arena_extend_strategy"] == "kNextPowerOfTwo"


@pytest.mark.parametrize(
    "env",
    [
        {"ORT_CUDA_MEM_LIMIT_GB": "lots"},
        {"ORT_CUDA_MEM_LIMIT_GB": "-1"},
        {"ORT_CUDA_MEM_LIMIT_FRACTION": "1.5"},
        {"ORT_CUDA_MEM_LIMIT_GB": "4", "ORT_CUDA_MEM_LIMIT_FRACTION": "0.5"},
        {"ORT_CUDA_ARENA_EXTEND_STRATEGY": "grow"},
        {"ORT_CUDNN_CONV_ALGO_SEARCH": "FASTEST"},
        {"ORT_CUDNN_USE_MAX_WORKSPACE": "maybe"},
    ],
)
def test_cuda_options_reject_typos(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="ORT_"):
        cuda_provider_options_from_env(env, total_memory_bytes=10**9)


@pytest.mark.parametrize(
    "kwargs",
    [{"chunk_s": 0.0}, {"overlap_s": -1.0}, {"chunk_s": 10.0, "overlap_s": 6.0}, {"batch_windows": 0},
     {"device": "gpu"}, {"device": "cuda:x"}],
)
def test_config_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SeparationConfig("model.onnx", **kwargs)


def test_cuda_without_cuda_runtime_is_an_error_not_a_slow_cpu_run(tiny_model: str) -> None:
    """CI and CPU pods have the CPU onnxruntime: asking for CUDA there is a configuration error that names the fix."""
    import onnxruntime as ort

    from emilia_pipe.devices import DeviceError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DeviceError, match=r"separation: device 'cuda:0' was requested .* \(install onnxruntime-gpu"):
        MdxSeparator(SeparationConfig(tiny_model, device="cuda:0", backend="onnxruntime"))
    separator = MdxSeparator(SeparationConfig(tiny_model, device="cpu"))
    assert separator.provider == CPU_EP and str(separator.torch_device) == "cpu"
