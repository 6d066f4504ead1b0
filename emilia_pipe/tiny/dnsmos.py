"""Random-weight stand-ins with DNSMOS's real contracts, for machines without the real files.

`sig_bak_ovr.onnx`: input `input_1` [N, 144160] -> `Identity:0` [N, 3]; `model_v8.onnx`: input `input_1`
[N, 900, 120] -> `Identity:0` [N, 1]. The stand-ins map simple energy statistics (mean and peak |x|) to plausible
raw scores that differ between segments, so the whole pipe runs offline; tests that judge quality use the real
DNSMOS files where the machine has them (tests/shared_models.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(in_shape: list, reduce_axes: list[int], out_dim: int, seed: int, project_every: int = 0) -> onnx.ModelProto:
    """`project_every` > 0 adds a fixed random projection of every n-th input value. Steady synthetic speech has
    near-equal energy statistics from one segment to the next; the projection spreads its scores by tenths, as a
    working model's are, so a batch of them passes `dnsmos_not_collapsed` (near-equal scores are what a broken model
    gives, and that check blocks them)."""
    rng = np.random.default_rng(seed)
    # Louder on average (mean |x|) scores higher, peakier scores lower, with a small random difference per output.
    shape = np.array([[4.0], [-1.0]], dtype=np.float32) + rng.standard_normal((2, out_dim)).astype(np.float32) * 0.1
    weight = numpy_helper.from_array(shape.astype(np.float32), "w")
    bias = numpy_helper.from_array(np.full((out_dim,), 3.0, dtype=np.float32), "b")
    axes = numpy_helper.from_array(np.array(reduce_axes, dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Abs", ["input_1"], ["abs"]),
        helper.make_node("ReduceMean", ["abs", "axes"], ["mean"], keepdims=1),
        helper.make_node("ReduceMax", ["abs", "axes"], ["peak"], keepdims=1),
        helper.make_node("Concat", ["mean", "peak"], ["feats3"], axis=-1),
        helper.make_node("Flatten", ["feats3"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["Identity:0" if not project_every else "energy"]),
    ]
    initializers = [weight, bias, axes]
    if project_every:
        n_values = int(np.prod(in_shape[1:]))
        picked = len(range(0, n_values, project_every))
        initializers += [
            numpy_helper.from_array((rng.standard_normal((picked, out_dim)) * 0.7).astype(np.float32), "w_proj"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "p_start"),
            numpy_helper.from_array(np.array([n_values], dtype=np.int64), "p_end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "p_axis"),
            numpy_helper.from_array(np.array([project_every], dtype=np.int64), "p_step"),
        ]
        nodes += [
            helper.make_node("Flatten", ["input_1"], ["flat"], axis=1),
            helper.make_node("Slice", ["flat", "p_start", "p_end", "p_axis", "p_step"], ["picked"]),
            helper.make_node("MatMul", ["picked", "w_proj"], ["proj"]),
            helper.make_node("Add", ["energy", "proj"], ["Identity:0"]),
        ]
    graph = helper.make_graph(
        nodes,
        "dnsmos_standin",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["N", out_dim])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def build(out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    sig = out_dir / "sig_bak_ovr.onnx"
    p808 = out_dir / "model_v8.onnx"
    # [N, 144160] -> reduce the time axis; [N, 900, 120] -> reduce both frame and mel axes.
    onnx.save(_model(["N", 144160], [1], 3, seed=0, project_every=1000), sig)
    onnx.save(_model(["N", 900, 120], [1, 2], 1, seed=1), p808)
    return sig, p808
