"""The torch executor of the ONNX files (`emilia_pipe.onnx_torch`) against ONNX Runtime, the float32 reference.

Tolerances (stated here, checked on CPU; the `cuda` variants run the same comparisons where a GPU is visible):
- separation: vocals' SNR against ONNX Runtime's vocals, >= 80 dB in float32 and >= 40 dB in float16
  (measured on the tiny MDX: 135 dB and 92 dB);
- DNSMOS on Microsoft's real files: absolute MOS difference <= 0.001 in float32 and <= 0.02 in float16
  (measured: 7e-7 and 0.0015).
float16 convolutions run on this CPU (slowly: ~25 s per DNSMOS window), so the float16 DNSMOS test scores one window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from emilia_pipe import audio as audio_io
from emilia_pipe.devices import DeviceError, onnx_backend, onnx_precision
from emilia_pipe.dnsmos import DNSMOS_SR, Dnsmos, DnsmosConfig, log_mel, log_mel_torch, mel_filterbank
from emilia_pipe.onnx_torch import OnnxTorchModel, UnsupportedOnnxModel
from emilia_pipe.separation import MdxSeparator, SeparationConfig
from emilia_pipe.tiny import mdx as tiny_mdx
from tests.shared_models import SHARED_MODELS, needs_shared_models

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SIG = str(SHARED_MODELS / "dnsmos/sig_bak_ovr.onnx")
P808 = str(SHARED_MODELS / "dnsmos/model_v8.onnx")
needs_dnsmos = needs_shared_models("dnsmos/sig_bak_ovr.onnx", "dnsmos/model_v8.onnx")
GPU = "cuda" if torch.cuda.is_available() else None
gpu_only = pytest.mark.skipif(GPU is None, reason="GPU-only comparison: torch sees no CUDA device on this machine")

SEPARATION_SNR_DB = {"float32": 80.0, "float16": 40.0}
DNSMOS_MOS_TOLERANCE = {"float32": 0.001, "float16": 0.02}


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((other.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise))


@pytest.fixture(scope="module")
def mdx_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_mdx.build(tmp_path_factory.mktemp("mdx") / "tiny_mdx.onnx"))


@pytest.fixture(scope="module")
def mix() -> np.ndarray:
    """40 s of speech over a music bed at the pipe's rate: several model windows and two chunks."""
    return audio_io.decode(SAMPLES / "music_bed.mp3", audio_io.TARGET_SR)[: 40 * audio_io.TARGET_SR]


@pytest.fixture(scope="module")
def reference_vocals(mdx_model: str, mix: np.ndarray) -> np.ndarray:
    return MdxSeparator(SeparationConfig(mdx_model, backend="onnxruntime", chunk_s=20.0)).vocals(mix, 24_000)


@pytest.mark.parametrize("device", ["cpu", pytest.param(GPU, marks=gpu_only, id="cuda")])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_torch_separation_agrees_with_onnxruntime(mdx_model, mix, reference_vocals, precision, device):
    separator = MdxSeparator(SeparationConfig(mdx_model, backend="torch", precision=precision, device=device,
                                              chunk_s=20.0))
    assert separator.runtime_device == device and separator.runtime.startswith(f"torch {precision}")
    vocals = separator.vocals(mix, 24_000)
    assert vocals.shape == reference_vocals.shape and vocals.dtype == np.float32
    assert snr_db(reference_vocals, vocals) >= SEPARATION_SNR_DB[precision]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return audio_io.decode(SAMPLES / "monologue.mp3", DNSMOS_SR)


@pytest.fixture(scope="module")
def reference_scores(speech: np.ndarray) -> list[dict[str, float]]:
    clips = [speech[DNSMOS_SR : 4 * DNSMOS_SR], speech[2 * DNSMOS_SR : 12 * DNSMOS_SR], speech[: 13 * DNSMOS_SR]]
    return Dnsmos(DnsmosConfig(SIG, P808, backend="onnxruntime")).score_many(clips, DNSMOS_SR)


def max_mos_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    assert [sorted(x) for x in a] == [sorted(x) for x in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)


@needs_dnsmos
@pytest.mark.parametrize("device", ["cpu", pytest.param(GPU, marks=gpu_only, id="cuda")])
def test_torch_dnsmos_float32_agrees_with_onnxruntime(speech, reference_scores, device):
    """Three clips (3 s tiled to 12 s, 10 s, 13 s): eight windows, P.835 and P.808."""
    clips = [speech[DNSMOS_SR : 4 * DNSMOS_SR], speech[2 * DNSMOS_SR : 12 * DNSMOS_SR], speech[: 13 * DNSMOS_SR]]
    dnsmos = Dnsmos(DnsmosConfig(SIG, P808, backend="torch", precision="float32", device=device, batch_size=3))
    assert dnsmos.runtime_device == device
    scores = dnsmos.score_many(clips, DNSMOS_SR)
    assert max_mos_difference(scores, reference_scores) <= DNSMOS_MOS_TOLERANCE["float32"]


@needs_dnsmos
@pytest.mark.parametrize("device", ["cpu", pytest.param(GPU, marks=gpu_only, id="cuda")])
def test_torch_dnsmos_float16_agrees_with_onnxruntime(speech, reference_scores, device):
    """One 10 s clip (one window) on the CPU, where float16 convolutions are slow; all three clips on a GPU."""
    clips = [speech[2 * DNSMOS_SR : 12 * DNSMOS_SR]]
    expected = reference_scores[1:2]
    if device != "cpu":
        clips = [speech[DNSMOS_SR : 4 * DNSMOS_SR], *clips, speech[: 13 * DNSMOS_SR]]
        expected = reference_scores
    dnsmos = Dnsmos(DnsmosConfig(SIG, P808, backend="torch", precision="float16", device=device))
    assert dnsmos.runtime.startswith("torch float16")
    assert max_mos_difference(dnsmos.score_many(clips, DNSMOS_SR), expected) <= DNSMOS_MOS_TOLERANCE["float16"]


def test_torch_log_mel_matches_the_numpy_front_end(speech):
    windows = np.stack([speech[:144_000], speech[16_000:160_000]]).astype(np.float32)
    filters = mel_filterbank()
    reference = log_mel(windows, filters)
    ours = log_mel_torch(torch.from_numpy(windows), torch.from_numpy(filters.astype(np.float32))).numpy()
    assert ours.shape == reference.shape == (2, 900, 120)
    assert np.abs(ours - reference).max() < 1e-3  # features in [-1, 1]: float32 rounding of dB values


def test_auto_is_onnxruntime_on_cpu_and_torch_float16_on_a_gpu():
    assert onnx_backend("auto", "cpu", "s") == "onnxruntime"
    assert onnx_backend("auto", "cuda:1", "s") == "torch"
    assert onnx_precision("auto", "torch", "cuda", "s") == "float16"
    assert onnx_precision("auto", "torch", "cpu", "s") == "float32"
    assert onnx_precision("auto", "onnxruntime", "cuda", "s") == "float32"
    with pytest.raises(ValueError, match="separation: precision float16 needs the torch backend"):
        SeparationConfig("m.onnx", backend="onnxruntime", precision="float16")
    with pytest.raises(ValueError, match="dnsmos: backend must be one of"):
        onnx_backend("tensorrt", "cuda", "dnsmos")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where torch sees no CUDA device")
def test_torch_backend_on_cuda_without_a_gpu_is_an_error_not_a_cpu_run(mdx_model):
    with pytest.raises(DeviceError, match="separation: device 'cuda' was requested but torch sees no CUDA device"):
        MdxSeparator(SeparationConfig(mdx_model, device="cuda", backend="torch"))
    with pytest.raises(DeviceError, match="dnsmos: device 'cuda:0' was requested but torch sees no CUDA device"):
        Dnsmos(DnsmosConfig("sig.onnx", device="cuda:0", backend="torch"))


def test_an_unsupported_operator_is_named_with_the_file_at_load(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UnsupportedOnnxModel, match=r"erf\.onnx: operators \['Erf'\] are not supported"):
        OnnxTorchModel(path)


def test_executor_ops_match_onnxruntime_on_a_mixed_graph(tmp_path):
    """Gemm, BatchNormalization, ConvTranspose, asymmetric pads, Slice with steps, Squeeze/Flatten, Softmax."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    ints = {n: numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in {
        "starts": [0, 1], "ends": [2**63 - 1, 7], "axes": [1, 3], "steps": [2, 2]}.items()}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 1, 0], kernel_shape=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"], epsilon=1e-3),
        helper.make_node("ConvTranspose", ["n", "wt"], ["u"], strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("Slice", ["u", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("ReduceMean", ["sl"], ["rm"], axes=[2], keepdims=0),
        helper.make_node("Flatten", ["rm"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "g", "gc"], ["gm"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["gm"], ["y"], axis=-1),
    ]
    inits = [init("w", rng.standard_normal((6, 3, 2, 2))), init("b", rng.standard_normal(6)),
             init("s", rng.uniform(0.5, 1.5, 6)), init("bb", rng.standard_normal(6)),
             init("mu", rng.standard_normal(6)), init("var", rng.uniform(0.5, 2, 6)),
             init("wt", rng.standard_normal((6, 4, 2, 2))), init("g", rng.standard_normal((5, 2 * 3))),
             init("gc", rng.standard_normal(5)), *ints.values()]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], initializer=inits)
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = OnnxTorchModel(path)(torch.from_numpy(x))[0].numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-5
