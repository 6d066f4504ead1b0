"""A random-weight MDX-Net of the production separator's shape (UVR-MDX-NET-Inst_HQ_3), for honest GPU timings.

Speed depends on shapes, not weights, so a network with the real one's layers, widths and contract gives the real
cost per window. The architecture is KUIELab's ConvTDFNet (the MDX-Net of the Music Demixing Challenge, which UVR's
MDX-Net ONNX files are exports of):

- kuielab/mdx-net `src/models/mdxnet.py` (ConvTDFNet) and `src/models/modules.py` (TFC_TDF), the same classes in
  UVR's `lib_v5/mdxnet.py`: a 1x1 first convolution to `g` channels; `num_blocks // 2` encoder levels, each a TFC_TDF
  block (`l` 3x3 convolutions + a time-distributed bottleneck of two linear layers over frequency, f -> f/bn -> f,
  added back) and a 2x2 stride-2 downsampling convolution adding `g` channels; a middle TFC_TDF block; mirrored
  decoder levels (2x2 transposed convolution, multiplicative skip, TFC_TDF); a 1x1 final convolution to 4 channels.
  BatchNorm after each convolution is folded into it, as an ONNX export in eval mode does; after the linear layers
  it stays a BatchNormalization node.
- The hyper-parameters of KUIELab's configs (`configs/model/ConvTDFNet_vocals.yaml`): num_blocks 11, l 3, k 3,
  bn 8, bias False; UVR's model data for Inst_HQ_3: dim_f 3072, dim_t 256 (2^8), n_fft 6144 (our separator's
  contract, `emilia_pipe.separation`).
- The growth `g` is not published for Inst_HQ_3. g = 48 is the one that reproduces its file size: 16.66 M float32
  parameters = 66.7 MB against the released UVR-MDX-NET-Inst_HQ_3.onnx's 66.8 MB (g = 32 would give 43.6 MB).
  The FLOPs per window therefore equal the real network's to the extent its architecture is this one:
  `flops_per_window()` counts them (convolutions, transposed convolutions and matrix products, 2 per multiply-add)
  at 0.76 TFLOP per 256-frame window, batch 1 (g = 32 would give 0.37).

`build()` writes the file (about 67 MB, seconds); `build(..., g=4, num_blocks=5)` gives a small network of the same
construction for tests. Weights are drawn so activations stay of order one through the residuals (scaled by
1/sqrt(2), the only node the real network lacks: an elementwise product, no FLOPs to speak of) and the multiplicative
skips (the transposed convolutions gate near one), so a float16 run meets realistic magnitudes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DIM_C, DIM_F, DIM_T = 4, 3072, 256
REAL_FILE_BYTES = 66_800_000  # UVR-MDX-NET-Inst_HQ_3.onnx as released (about 66.8 MB)


@dataclass(frozen=True)
class MdxNetShape:
    """ConvTDFNet hyper-parameters; the defaults are UVR-MDX-NET-Inst_HQ_3's (see the module docstring)."""

    num_blocks: int = 11
    l: int = 3  # noqa: E741 - KUIELab's name
    g: int = 48
    k: int = 3
    bn: int = 8
    dim_f: int = DIM_F
    dim_t: int = DIM_T

    @property
    def levels(self) -> int:
        return self.num_blocks // 2


def _tfc_tdf_cost(c: int, f: int, t: int, s: MdxNetShape) -> tuple[int, int]:
    """(parameters, FLOPs) of one TFC_TDF block on a [c, t, f] map."""
    conv_params = s.l * (c * c * s.k * s.k + c)
    conv_flops = s.l * 2 * c * c * s.k * s.k * t * f
    hidden = f // s.bn
    tdf_params = 2 * f * hidden + 2 * 4 * c  # two linear layers (no bias) + two BatchNorms
    tdf_flops = 2 * (2 * c * t * f * hidden)
    return conv_params + tdf_params, conv_flops + tdf_flops


def parameters(shape: MdxNetShape = MdxNetShape()) -> int:
    return _count(shape)[0]


def flops_per_window(shape: MdxNetShape = MdxNetShape()) -> int:
    """FLOPs of one window (batch 1): convolutions, transposed convolutions, matrix products; 2 per multiply-add."""
    return _count(shape)[1]


def _count(s: MdxNetShape) -> tuple[int, int]:
    f, t, c = s.dim_f, s.dim_t, s.g
    params = DIM_C * c + c
    flops = 2 * DIM_C * c * f * t
    for _ in range(s.levels):
        p, fl = _tfc_tdf_cost(c, f, t, s)
        params += p + c * (c + s.g) * 4 + (c + s.g)
        flops += fl + 2 * c * (c + s.g) * 4 * (t // 2) * (f // 2)
        f, t, c = f // 2, t // 2, c + s.g
    p, fl = _tfc_tdf_cost(c, f, t, s)
    params, flops = params + p, flops + fl
    for _ in range(s.levels):
        params += c * (c - s.g) * 4 + (c - s.g)
        flops += 2 * c * (c - s.g) * 4 * t * f  # transposed conv: each input pixel writes a 2x2 patch
        f, t, c = f * 2, t * 2, c - s.g
        p, fl = _tfc_tdf_cost(c, f, t, s)
        params, flops = params + p, flops + fl
    params += c * DIM_C + DIM_C
    flops += 2 * c * DIM_C * f * t
    return params, flops


def _graph(s: MdxNetShape, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    counter = iter(range(1_000_000))

    def name(prefix: str) -> str:
        return f"{prefix}_{next(counter)}"

    def tensor(prefix: str, array: np.ndarray) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), n))
        return n

    def conv(x: str, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True, gain: float = 2.0) -> str:
        w = rng.standard_normal((cout, cin, kernel, kernel)) * np.sqrt(gain / (cin * kernel * kernel))
        out = name("conv")
        pad = kernel // 2 if stride == 1 else 0
        nodes.append(helper.make_node("Conv", [x, tensor("w", w), tensor("b", rng.standard_normal(cout) * 0.01)],
                                      [out], kernel_shape=[kernel, kernel], strides=[stride, stride],
                                      pads=[pad] * 4))
        return _relu(out) if relu else out

    def _relu(x: str) -> str:
        out = name("relu")
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    def conv_transpose(x: str, cin: int, cout: int) -> str:
        # A gate near one: the multiplicative skip then keeps the encoder's scale instead of squaring it away.
        w = rng.standard_normal((cin, cout, 2, 2)) * np.sqrt(0.1 / cin)
        out = name("convT")
        bias = tensor("b", 1.0 + rng.standard_normal(cout) * 0.01)
        nodes.append(helper.make_node("ConvTranspose", [x, tensor("w", w), bias], [out], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        return _relu(out)

    def linear_bn_relu(x: str, c: int, fin: int, fout: int) -> str:
        mm = name("tdf")
        nodes.append(helper.make_node("MatMul", [x, tensor("w", rng.standard_normal((fin, fout)) / np.sqrt(fin))],
                                      [mm]))
        bn = name("bn")
        nodes.append(helper.make_node(
            "BatchNormalization",
            [mm, tensor("s", rng.uniform(0.8, 1.2, c) * np.sqrt(2.0)), tensor("b", rng.standard_normal(c) * 0.01),
             tensor("m", np.zeros(c)), tensor("v", np.ones(c))],
            [bn], epsilon=1e-5))
        return _relu(bn)

    def tfc_tdf(x: str, c: int, f: int) -> str:
        for _ in range(s.l):
            x = conv(x, c, c, s.k)
        hidden = linear_bn_relu(x, c, f, f // s.bn)
        tdf = linear_bn_relu(hidden, c, f // s.bn, f)
        out = name("res")
        nodes.append(helper.make_node("Add", [x, tdf], [out]))
        scaled = name("scaled")  # keeps the residual's scale: x + tdf(x) with both of order one
        nodes.append(helper.make_node("Mul", [out, tensor("h", np.array(np.sqrt(0.5)))], [scaled]))
        return scaled

    x = conv("input", DIM_C, s.g, 1)
    tr = name("t")
    nodes.append(helper.make_node("Transpose", [x], [tr], perm=[0, 1, 3, 2]))  # [B, c, T, F]: linear over F
    x, c, f = tr, s.g, s.dim_f
    skips = []
    for _ in range(s.levels):
        x = tfc_tdf(x, c, f)
        skips.append(x)
        x = conv(x, c, c + s.g, 2, stride=2)
        c, f = c + s.g, f // 2
    x = tfc_tdf(x, c, f)
    for skip in reversed(skips):
        x = conv_transpose(x, c, c - s.g)
        c, f = c - s.g, f * 2
        mul = name("skip")
        nodes.append(helper.make_node("Mul", [x, skip], [mul]))
        x = tfc_tdf(mul, c, f)
    back = name("t")
    nodes.append(helper.make_node("Transpose", [x], [back], perm=[0, 1, 3, 2]))
    out = conv(back, c, DIM_C, 1, relu=False, gain=1.0)
    final_w, final_b = nodes[-1].input[1], nodes[-1].input[2]
    nodes.append(helper.make_node("Identity", [out], ["output"]))
    shape = ["batch", DIM_C, s.dim_f, s.dim_t]
    graph = helper.make_graph(nodes, "conv_tdf_net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="emilia_pipe.tiny.mdx_net")
    model.doc_string = f"random-weight ConvTDFNet {asdict(s)}"
    onnx.checker.check_model(model)
    _calibrate(model, s, rng, final_w, final_b)
    return model


def _calibrate(model, s: MdxNetShape, rng: np.random.Generator, weight: str, bias: str) -> None:
    """Scale the final convolution so the 'instrumental' has half the input's level, as a separator's would.

    Measured once on a short input (32 frames: the network is convolutional in time), with the torch executor.
    """
    import torch
    from onnx import numpy_helper

    from emilia_pipe.onnx_torch import OnnxTorchModel

    frames = 2 ** s.levels
    x = torch.from_numpy((rng.standard_normal((1, DIM_C, s.dim_f, frames)) * 0.3).astype(np.float32))
    y = OnnxTorchModel(model)(x)[0]
    gain = 0.5 * float(x.std()) / max(float(y.std()), 1e-12)
    for init in model.graph.initializer:
        if init.name in (weight, bias):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(gain), init.name))


def build(out_path: Path, shape: MdxNetShape = MdxNetShape(), seed: int = 20_251_130) -> Path:
    """Write the network to `out_path` (parents created) and return the path; the same file for the same seed."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_graph(shape, seed), out_path)
    return out_path


def describe(shape: MdxNetShape = MdxNetShape(), path: Path | None = None) -> dict:
    """The numbers a benchmark records next to its timings (and the real model's, for comparison)."""
    out = {"architecture": "KUIELab ConvTDFNet (MDX-Net), random weights", **asdict(shape),
           "parameters": parameters(shape), "gflops_per_window": round(flops_per_window(shape) / 1e9, 1),
           "real_model_file_bytes": REAL_FILE_BYTES}
    if path is not None:
        out["file_bytes"] = Path(path).stat().st_size
    return out
