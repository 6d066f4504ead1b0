"""Random-weight stand-in with the contract of UVR's MDX-Net ONNX separators (UVR-MDX-NET-Inst_HQ_3).

Contract: input `input` [batch, 4, 3072, 256] float32 -> output `output` of the same shape: the instrumental's
spectrogram (real/imag of two stereo channels, 3072 frequency bins, 256 STFT frames). The batch axis is dynamic,
as in the real file, so the separator's batching runs unchanged against it.

The graph is `0.5 * x + conv1x1(relu(conv3x3(x) + b1)) + b2`: the residual keeps the "instrumental" tied to the mix (so
the vocals, mix minus instrumental, are a real signal and not noise), the 3x3 convolution gives it a time-frequency
context of a few bins and frames (so the window placement matters as it does for the real model), and the ReLU with
biases makes it non-odd, so the separator's denoise pass, (-f(-x) + f(x)) / 2, changes the result. Weights are
drawn from a fixed seed: the same file every build, a few kB on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS, DIM_F, DIM_T = 4, 3072, 256
HIDDEN = 4
SEED = 20_240


def _model(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array.astype(np.float32), name)

    # Kaiming-like scale for the first layer; the second is small so the residual dominates (a "mild" separator).
    w1 = rng.standard_normal((HIDDEN, CHANNELS, 3, 3)) / np.sqrt(CHANNELS * 9)
    b1 = rng.standard_normal(HIDDEN) * 0.5
    w2 = rng.standard_normal((CHANNELS, HIDDEN, 1, 1)) * 0.05
    b2 = rng.standard_normal(CHANNELS) * 0.01
    initializers = [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2),
                    init("half", np.array(0.5))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["h_act"]),
        helper.make_node("Conv", ["h_act", "w2", "b2"], ["delta"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["input", "half"], ["residual"]),
        helper.make_node("Add", ["residual", "delta"], ["output"]),
    ]
    shape = ["batch", CHANNELS, DIM_F, DIM_T]
    graph = helper.make_graph(
        nodes,
        "mdx_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="emilia_pipe.tiny.mdx")
    onnx.checker.check_model(model)
    return model


def build(out_path: Path) -> Path:
    """Write the stand-in to `out_path` (parents created) and return the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_model(), out_path)
    return out_path
