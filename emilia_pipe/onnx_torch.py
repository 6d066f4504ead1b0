"""Run an ONNX file with torch: the initializers become tensors on the device, the nodes run as torch ops.

Why: the GPU image's ONNX Runtime CUDA provider needs its own 250 MB of CUDA libraries and copies every batch between
host and device around the separator's STFT (which is torch), while torch is on every GPU worker already. Executing
the *same* ONNX file with torch keeps the MDX-Net and DNSMOS models on the GPU next to the STFT and log-mel front
ends, with no host round trip per batch, and gives half precision without a converted file. ONNX Runtime stays the
reference (and the CPU default): tests compare this executor with it on the real DNSMOS files and on MDX-Nets.

Only the operators those models use are implemented (a file with any other one fails at load, naming the operator
and the file, not mid-batch). Shapes are read at run time, so dynamic batch axes work as in ONNX Runtime.

Half precision (`half=True`) follows autocast's rules, decided once per graph at load:
- convolutions and matrix products run in float16 with float16 weights, except the model's *first* ones (those no
  other convolution or product feeds), which see the raw input (audio samples, a spectrogram) and stay float32;
- logarithms, powers, square roots, divisions, exponentials, reductions to a mean or sum and normalisations run in
  float32 (their inputs are cast up), so a float16 overflow or underflow cannot reach them;
- everything else keeps the precision of its input; the outputs are returned as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_HEAVY = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_FLOAT32_OPS = {"Log", "Exp", "Pow", "Sqrt", "Div", "Reciprocal", "Softmax", "ReduceMean", "ReduceSum",
                "BatchNormalization", "InstanceNormalization"}
_INT64_MAX = 2**63 - 1


class UnsupportedOnnxModel(ValueError):
    """The ONNX file uses something this executor does not implement (named in the message with the file)."""


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class OnnxTorchModel:
    """One ONNX graph on one torch device; call it with input tensors, get the output tensors (float32).

    Attributes:
        input_names, output_names: the graph's, in order.
        input_shapes: per input, its dims (int, or str/None for a symbolic axis), as `onnx` reports them.
        device: where the weights live and the graph runs.
        half: whether heavy ops run in float16 (see the module docstring).
    """

    def __init__(self, path: str | Path | Any, device: str | torch.device = "cpu", half: bool = False):
        import onnx
        from onnx import numpy_helper

        is_proto = isinstance(path, onnx.ModelProto)
        self.path = f"<in-memory {path.graph.name}>" if is_proto else str(path)
        self.device = torch.device(device)
        self.half = half
        model = path if is_proto else onnx.load(self.path)
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self._consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self._weights: dict[str, torch.Tensor] = {}
        for name, array in self._consts.items():
            if array.dtype.kind == "f":
                self._weights[name] = torch.from_numpy(np.array(array, dtype=np.float32)).to(self.device)
        self._half_weights: dict[str, torch.Tensor] = {}
        init_names = set(self._consts)
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]
        self.input_shapes = {
            i.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in i.type.tensor_type.shape.dim]
            for i in graph.input if i.name not in init_names
        }
        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any], bool]] = []
        unknown = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS})
        if unknown:
            raise UnsupportedOnnxModel(f"{self.path}: operators {unknown} are not supported by the torch executor "
                                       "(use the onnxruntime backend for this model)")
        after_heavy: set[str] = set()  # tensors that some convolution or matrix product feeds
        for node in graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                self._consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
                value = self._consts[node.output[0]]
                if value.dtype.kind == "f":
                    self._weights[node.output[0]] = torch.from_numpy(np.array(value, dtype=np.float32)).to(self.device)
                continue
            fed = any(i in after_heavy for i in node.input)
            first_layer = node.op_type in _HEAVY and not fed
            if node.op_type in _HEAVY or fed:
                after_heavy.update(node.output)
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs, first_layer))
        last_reader: dict[str, int] = {}
        for index, (_, ins, _, _, _) in enumerate(self._nodes):
            for name in ins:
                last_reader[name] = index
        self._free_after: list[list[str]] = [[] for _ in self._nodes]
        for name, index in last_reader.items():
            if name not in self.output_names and name not in self._consts:
                self._free_after[index].append(name)

    # ---- running ---------------------------------------------------------------------------------------------------

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path}: expected {len(self.input_names)} inputs, got {len(inputs)}")
        env: dict[str, torch.Tensor] = {}
        for name, x in zip(self.input_names, inputs, strict=True):
            env[name] = x.to(self.device, torch.float32) if x.is_floating_point() else x.to(self.device)
        with torch.inference_mode():
            for (op, ins, outs, attrs, first_layer), free in zip(self._nodes, self._free_after, strict=True):
                args = [self._value(env, name) if name else None for name in ins]
                result = _OPS[op](self, args, ins, attrs, first_layer)
                if isinstance(result, torch.Tensor):
                    result = (result,)
                for name, value in zip(outs, result, strict=False):
                    env[name] = value
                for name in free:  # what no later node reads: peak memory stays near one layer's activations
                    env.pop(name, None)
        return [env[name].float() if env[name].is_floating_point() else env[name] for name in self.output_names]

    def _value(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self._weights:
            return self._weights[name]
        if name in self._consts:
            return torch.from_numpy(np.array(self._consts[name])).to(self.device)
        raise UnsupportedOnnxModel(f"{self.path}: tensor {name!r} is used before it is computed")

    def const(self, name: str) -> np.ndarray:
        """An integer operand (shape, axes, slice bounds) that must be known at load: initializer or Constant."""
        if name not in self._consts:
            raise UnsupportedOnnxModel(f"{self.path}: {name!r} must be a constant (shapes computed at run time "
                                       "are not supported)")
        return self._consts[name]

    def heavy_operand(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A weight in the precision its op runs in (float16 copies made once)."""
        if not self.half or name not in self._weights:
            return value
        if name not in self._half_weights:
            self._half_weights[name] = self._weights[name].half()
        return self._half_weights[name]

    def runs_half(self, first_layer: bool) -> bool:
        return self.half and not first_layer


# ---- operators -------------------------------------------------------------------------------------------------

Op = Callable[[OnnxTorchModel, list, list, dict, bool], Any]


def _heavy_inputs(m: OnnxTorchModel, args: list, names: list, first_layer: bool) -> list:
    half = m.runs_half(first_layer)
    out = []
    for value, name in zip(args, names, strict=True):
        if value is None or not value.is_floating_point():
            out.append(value)
        elif half:
            out.append(m.heavy_operand(name, value) if name in m._weights else value.half())
        else:
            out.append(value.float())
    return out


def _pads(attrs: dict, spatial: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
          x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis, from `pads` or `auto_pad`."""
    auto = _decode(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        return pads[:spatial], pads[spatial:]
    if auto == "VALID":
        return [0] * spatial, [0] * spatial
    begin, end = [], []
    for i in range(spatial):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


def _pad_input(x: torch.Tensor, begin: list[int], end: list[int], value: float = 0.0) -> tuple[torch.Tensor, Any]:
    """Symmetric pads go to the op; asymmetric ones are applied here (F.pad takes the last axis first)."""
    if begin == end:
        return x, begin
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * len(begin)


def _conv(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x, w, b = (_heavy_inputs(m, args, names, first_layer) + [None])[:3]
    spatial = x.dim() - 2
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    begin, end = _pads(attrs, spatial, kernel, strides, dilations, x)
    x, padding = _pad_input(x, begin, end)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=int(attrs.get("group", 1)))


def _conv_transpose(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x, w, b = (_heavy_inputs(m, args, names, first_layer) + [None])[:3]
    spatial = x.dim() - 2
    if _decode(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "", "VALID") or "output_shape" in attrs:
        raise UnsupportedOnnxModel(f"{m.path}: ConvTranspose with auto_pad SAME or output_shape is not supported")
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    if pads[:spatial] != pads[spatial:]:
        raise UnsupportedOnnxModel(f"{m.path}: ConvTranspose with asymmetric pads is not supported")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return fn(x, w, b, stride=list(attrs.get("strides", [1] * spatial)), padding=pads[:spatial],
              output_padding=list(attrs.get("output_padding", [0] * spatial)),
              groups=int(attrs.get("group", 1)), dilation=list(attrs.get("dilations", [1] * spatial)))


def _matmul(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    a, b = _heavy_inputs(m, args, names, first_layer)
    return torch.matmul(a, b)


def _gemm(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    a, b, c = (_heavy_inputs(m, args, names, first_layer) + [None])[:3]
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = torch.matmul(a, b) * float(attrs.get("alpha", 1.0))
    if c is not None:
        y = y + c * float(attrs.get("beta", 1.0))
    return y


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float32: bool = False) -> Op:
    def op(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
        a, b = args
        if float32:
            a = a.float() if a.is_floating_point() else a
            b = b.float() if b.is_floating_point() else b
        elif a.dtype != b.dtype and a.is_floating_point() and b.is_floating_point():
            # A float32 constant next to a float16 activation follows the activation, as under autocast.
            if names[1] in m._weights and a.dtype == torch.float16:
                b = m.heavy_operand(names[1], b) if m.half else b.half()
            elif names[0] in m._weights and b.dtype == torch.float16:
                a = m.heavy_operand(names[0], a) if m.half else a.half()
        return fn(a, b)

    return op


def _unary(fn: Callable[[torch.Tensor], torch.Tensor], float32: bool = False) -> Op:
    def op(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
        x = args[0]
        return fn(x.float() if float32 and x.is_floating_point() else x)

    return op


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def op(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
        out = args[0]
        for value in args[1:]:
            out = _binary(fn)(m, [out, value], ["", ""], attrs, first_layer)
        return out

    return op


def _axes(m: OnnxTorchModel, args: list, names: list, attrs: dict, position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the optional input (newer ones)."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(names) > position and names[position]:
        return [int(a) for a in m.const(names[position]).reshape(-1)]
    return None


def _reduce(fn: str, float32: bool = False) -> Op:
    def op(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
        x = args[0].float() if float32 else args[0]
        axes = _axes(m, args, names, attrs, 1)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = [a % x.dim() for a in axes]
        if fn == "max":
            return torch.amax(x, dim=axes, keepdim=keep)
        if fn == "min":
            return torch.amin(x, dim=axes, keepdim=keep)
        if fn == "mean":
            return torch.mean(x, dim=axes, keepdim=keep)
        return torch.sum(x, dim=axes, keepdim=keep)

    return op


def _reshape(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    shape = [int(s) for s in m.const(names[1]).reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    axes = _axes(m, args, names, attrs, 1) or []
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    axes = _axes(m, args, names, attrs, 1)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _slice(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    if "starts" in attrs:  # opset < 10
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in m.const(names[1]).reshape(-1)]
        ends = [int(v) for v in m.const(names[2]).reshape(-1)]
        axes = ([int(v) for v in m.const(names[3]).reshape(-1)] if len(names) > 3 and names[3]
                else list(range(len(starts))))
        steps = [int(v) for v in m.const(names[4]).reshape(-1)] if len(names) > 4 and names[4] else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 1:
            raise UnsupportedOnnxModel(f"{m.path}: Slice with step {step} is not supported")
        size = x.shape[axis]
        end = min(end, size) if end < _INT64_MAX else size
        index[axis % x.dim()] = slice(max(start, -size), end, step)
    return x[tuple(index)]


def _transpose(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    perm = attrs.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


def _concat(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    dtypes = {a.dtype for a in args}
    if len(dtypes) > 1:
        args = [a.float() for a in args]
    return torch.cat(args, dim=int(attrs["axis"]))


def _flatten(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x = args[0]
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


def _pool(kind: str) -> Op:
    def op(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
        x = args[0]
        spatial = x.dim() - 2
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * spatial))
        dilations = list(attrs.get("dilations", [1] * spatial))
        begin, end = _pads(attrs, spatial, kernel, strides, dilations, x)
        fill = float("-inf") if kind == "max" else 0.0
        x, padding = _pad_input(x, begin, end, fill)
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
            return fn(x, kernel, strides, padding, dilations, ceil_mode=ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        return fn(x, kernel, strides, padding, ceil_mode=ceil, count_include_pad=bool(attrs.get("count_include_pad")))

    return op


def _batch_norm(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    x, scale, bias, mean, var = (a.float() for a in args[:5])
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(attrs.get("epsilon", 1e-5)))


def _softmax(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    return torch.softmax(args[0].float(), dim=int(attrs.get("axis", -1)))


def _leaky_relu(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    return F.leaky_relu(args[0], float(attrs.get("alpha", 0.01)))


def _identity(m: OnnxTorchModel, args: list, names: list, attrs: dict, first_layer: bool) -> torch.Tensor:
    return args[0]


_OPS: dict[str, Op] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div, float32=True),
    "Pow": _binary(torch.pow, float32=True),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Abs": _unary(torch.abs),
    "Neg": _unary(torch.neg),
    "Sqrt": _unary(torch.sqrt, float32=True),
    "Log": _unary(torch.log, float32=True),
    "Exp": _unary(torch.exp, float32=True),
    "Reciprocal": _unary(torch.reciprocal, float32=True),
    "LeakyRelu": _leaky_relu,
    "Softmax": _softmax,
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ReduceMean": _reduce("mean", float32=True),
    "ReduceSum": _reduce("sum", float32=True),
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Transpose": _transpose,
    "Concat": _concat,
    "Flatten": _flatten,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "BatchNormalization": _batch_norm,
    "Identity": _identity,
    "Dropout": _identity,
    "Constant": _identity,  # folded into constants at load; never run
}
