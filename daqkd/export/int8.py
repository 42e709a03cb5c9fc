"""``student_int8.onnx``: the frozen student in the form ONNX Runtime's CPU integer kernels run.

``export.export_onnx`` writes the student exactly (Q/DQ around float convolutions), which ONNX
Runtime computes in float. This module writes a QDQ graph laid out so that ONNX Runtime fuses every
quantized convolution into QLinearConv (uint8 activations, symmetric per-channel int8 weights, int32
bias) and every residual addition into QLinearAdd, and keeps the b-bit range of an activation as a
Clip on its uint8 integers between two QLinearConvs:

- a conv whose output goes through BatchNorm (folded) and ReLU into the next layer's activation
  quantizer is requantized straight onto that quantizer's grid: the ReLU becomes the Clip's lower
  bound and a fractional zero point moves into the conv's bias (exact in real arithmetic:
  round(max(y, 0)/s + z) = max(round((y + s·r)/s) + zi, round(z)) for z = zi + r; the kernels round
  the int32 bias, up to half of x_s·w_s, and the requantization, so activations within that of a
  rounding boundary move one step, and at low bits such moves cascade through the blocks);
- weights on a mid-rise grid (EWGS, DoReFa: k − L/2) are written exactly as symmetric int8 by
  doubling the integer grid and halving the scale (2k − L), up to 7 bits; LSQ's signed grid is int8
  already; the integers are then scaled by the largest power of two that fits (``headroom``: ×8
  for a W4A4 layer, ×32 for W2A2, less with more activation bits, none for most 8-bit layers), which
  leaves the weights exact and makes the int32 bias's unit as fine as it can be;
- the bias: QLinearConv adds it as int32 in units of x_scale·w_scale, so the BatchNorm-folded float
  bias is rounded (by up to half a unit). With the 8-bit residual stream (below) this and the
  stream's own rounding are what separate this form from the student: each moves conv outputs
  within its size of a rounding boundary by one step of the next quantizer, and at 4 bits such moves
  spread through the following layers (a W4A4 LSQ ResNet-20 with the stream in float, 1,000 test
  images: 0.40 % of the first folded layer's activation integers move with the unscaled bias, and
  22 % of the last layer's; with the bias unit scaled ×8, 0.06 % of the first and 21 % of the last:
  scripts/int8_variants.py --trace, README, "Exporting a student"). ONNX Runtime's own QDQ optimizations round a float bias the same way
  (scripts/ort_bias_rounding.py);
- what the trained student keeps in float — the residual stream (a ResNet's block inputs and conv
  outputs before the addition) and the first layer's output — is quantized to 8 bits on ranges of
  least quantization error on a batch of calibration images (``stream_bits=None`` keeps it in float,
  with integer kernels for the folded convs only). So are 8-bit mid-rise weights (2k − 255 does not
  fit int8: rescaled by 254/255). The export measures what this costs (its agreement with the
  training-time student and its test accuracy, in export.json); the exact form is student.onnx.

Models: CIFAR ResNets, ResNet-18 and VGG (convolutions, ReLU, residual additions, max- and average-
pooling, option-A and 1×1-conv shortcuts). Anything else (MobileNetV2's linear bottlenecks, a signed
activation grid, a BatchNorm that could not be folded) is an ExportError naming it.
"""
from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from daqkd.errors import ExportError
from daqkd.models.resnet_cifar import PadShortcut
from daqkd.quant.base import mse_range
from daqkd.quant.convert import FloatLayer, FrozenLayer

OPSET = 13  # written by hand with onnx.helper (the layout ONNX Runtime 1.32 fuses into QLinearConv was checked at 13)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FrozenLayer, FloatLayer, PadShortcut)) or super().is_leaf_module(m, qualname)


def _is_relu(node: torch.fx.Node, model: nn.Module) -> bool:
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    if node.op == "call_method":
        return node.target == "relu"
    return node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.ReLU)


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (node.op == "call_method" and node.target == "add")


def _module(node: torch.fx.Node, model: nn.Module):
    return model.get_submodule(node.target) if node.op == "call_module" else None


def headroom(w_top: int, x_top: int) -> int:
    """The largest shift k with the weight integers j·2^k still int8 (|j|·2^k ≤ 127) and every pair
    of products 2·x·j·2^k within int16 (x ≤ ``x_top``, the layer's largest activation integer).

    Scaling the integers by 2^k and the scale by 2^-k leaves the weights' values exact, and makes the
    int32 bias's unit (x_scale·w_scale, which QLinearConv requires) 2^k times finer, so the rounded
    bias moves outputs 2^k times less (the integer form's main disagreement with the student: see
    the module's docstring). The int16 bound keeps the product exact on x86 CPUs without VNNI, whose
    u8×s8 kernels (AVX2's vpmaddubsw) add pairs of products with int16 saturation."""
    k = 0
    while w_top and w_top * 2 ** (k + 1) <= 127 and 2 * x_top * w_top * 2 ** (k + 1) <= 32767:
        k += 1
    return k


def _grid8(lo: float, hi: float) -> tuple[float, int]:
    """An 8-bit uint grid (scale, zero point) covering [lo, hi] and 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255
    return scale, int(round(-lo / scale))


class _Graph:
    """ONNX nodes and initializers, named uniquely."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


class _Q:
    """A uint8 tensor on grid (scale, zero point): its real value is scale·(q − zero). ``grid`` says
    which activation quantizer's integers it holds, when it is one (the fold)."""

    def __init__(self, name: str, scale: float, zero: int):
        self.name, self.scale, self.zero = name, scale, zero
        self.float_name: str | None = None
        self.grid: tuple | None = None


def _grid_key(a) -> tuple:
    return (a.in_scale, a.in_zero_int, a.in_zero_rem, a.out_scale, a.out_zero_int, a.qmin, a.qmax)


class Int8Exporter:
    """One walk of the frozen student that decides the integer graph, and writes it through ``graph``:
    ONNX nodes (``_Graph``, the default) or their values on a batch (``daqkd.export.eager.EagerGraph``).
    ``ranges`` (each fx node's 8-bit range, from ``ranges(...)``) are calibrated on ``calibration``
    when not given."""

    def __init__(self, frozen: nn.Module, calibration: torch.Tensor | None, stream_bits: int | None = 8, graph=None,
                 ranges: dict[str, tuple[float, float]] | None = None):
        self.stream_bits = stream_bits  # 8: the residual stream on 8-bit grids (fast); None: in float (exact)
        self.model = frozen.eval()
        self.graph = torch.fx.GraphModule(frozen, _Tracer().trace(frozen))
        self.ranges = ranges if ranges is not None else self._calibrate(calibration)
        self.g = graph if graph is not None else _Graph()
        self.values: dict[torch.fx.Node, object] = {}
        self.layer_inputs: dict[str, object] = {}  # module name → the value its conv / linear reads (a _Q, or a float's name)
        self.fused_convs = 0

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor) -> dict[str, tuple[float, float]]:
        """Every node's 8-bit clipping range on ``x`` (the grids of what the student keeps in float):
        the range of least quantization error at 255 steps (``mse_range``), not the raw [min, max],
        whose outliers would make the step of every other value coarse."""
        ranges: dict[str, tuple[float, float]] = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    lo, hi = min(float(out.min()), 0.0), max(float(out.max()), 0.0)
                    ranges[n.name] = mse_range(out, 255, lo, hi, steps=200)
                return out

        Recorder(self.graph).run(x)
        return ranges

    # ------------------------------------------------------------------ values

    def as_float(self, v) -> str:
        if isinstance(v, str):
            return v
        if v.float_name is None:
            v.float_name = self.g.op("DequantizeLinear", [v.name, self.g.const("s", np.float32(v.scale)),
                                                          self.g.const("z", np.uint8(v.zero))], "dq")
        return v.float_name

    def quantize8(self, v, node: torch.fx.Node):
        """A float value on the 8-bit grid calibrated for ``node``'s output (unchanged with a float stream)."""
        if isinstance(v, _Q) or self.stream_bits is None:
            return v
        scale, zero = _grid8(*self.ranges[node.name])
        q = self.g.op("QuantizeLinear", [v, self.g.const("s", np.float32(scale)), self.g.const("z", np.uint8(zero))], "q")
        return _Q(q, scale, zero)

    def act_input(self, v, layer: FrozenLayer) -> _Q:
        """``v`` on ``layer``'s activation grid (from float, or requantized from another grid)."""
        a = layer.act
        self._check_act(layer)
        x = self.as_float(v)
        if a.in_zero_rem:
            x = self.g.op("Add", [x, self.g.const("r", np.float32(a.in_scale * a.in_zero_rem))], "shift")
        q = self.g.op("QuantizeLinear", [x, self.g.const("s", np.float32(a.in_scale)), self.g.const("z", np.uint8(a.in_zero_int))], "q")
        q = self._clip(q, a.qmin, a.qmax)
        return _Q(q, a.out_scale, a.out_zero_int)

    def _clip(self, q: str, lo: int, hi: int) -> str:
        if lo <= 0 and hi >= 255:
            return q
        return self.g.op("Clip", [q, self.g.const("lo", np.uint8(max(lo, 0))), self.g.const("hi", np.uint8(min(hi, 255)))], "clip")

    def _check_act(self, layer: FrozenLayer) -> None:
        a = layer.act
        if a.out_zero_rem:
            raise ExportError(f"an activation grid with a fractional output zero point ({type(layer).__name__}, signed activations) has no "
                              "integer-kernel form; export the exact form (student.onnx) instead")

    # ------------------------------------------------------------------ layers

    def weights(self, layer: FrozenLayer) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric int8 integers and per-channel scales with s·j = the layer's weights."""
        k = layer.weight_int.to(torch.int32)
        shape = (-1,) + (1,) * (k.ndim - 1)
        zi, r = layer.weight_zero_int.to(torch.int32).view(shape), layer.weight_zero_rem
        s = layer.weight_scale.double()
        if r == 0:
            j, scale = k - zi, s
        elif abs(r) == 0.5:
            j, scale = 2 * k - 2 * zi - int(round(2 * r)), s / 2
        else:
            raise ExportError(f"a weight zero point with remainder {r} has no symmetric int8 form")
        top = int(j.abs().max())
        if top > 127:  # 8-bit mid-rise: 2k − 255 needs 9 bits; rescale onto [−127, 127]
            factor = top / 127
            j, scale = torch.round(j.double() / factor).to(torch.int32), scale * factor
        else:
            shift = headroom(top, layer.act.qmax if layer.act is not None else 255)
            j, scale = j * 2**shift, scale / 2**shift
        return j.to(torch.int8).cpu().numpy(), scale.float().cpu().numpy()

    def conv(self, layer: FrozenLayer, x: _Q, out_grid: tuple[float, float] | None, extra_bias: float = 0.0) -> str:
        """DQ(x) → Conv(DQ(int8 w), DQ(int32 b)) [→ Q(out_grid)]; ONNX Runtime fuses it to QLinearConv."""
        if layer.kind != "conv":
            raise ExportError("a quantized linear layer has no integer-kernel form here (quantizer.first_last=int8); export student.onnx")
        j, w_scale = self.weights(layer)
        xf = self.as_float(x)
        wq = self.g.const("w", j)
        w = self.g.op("DequantizeLinear", [wq, self.g.const("ws", w_scale), self.g.const("wz", np.zeros(len(w_scale), np.int8))], "dqw",
                      axis=0)
        b_scale = (np.float64(x.scale) * w_scale.astype(np.float64)).astype(np.float32)
        bias = layer.bias.double().cpu().numpy() + extra_bias
        b_units = np.round(bias / b_scale)
        if not np.all(np.abs(b_units) < 2**31):
            raise ExportError(f"a conv bias of {float(np.abs(bias).max()):.3g} is {float(np.abs(b_units).max()):.3g} units of x_scale·w_scale, "
                              "more than int32 holds; export the exact form (student.onnx)")
        b_int = b_units.astype(np.int32)
        b = self.g.op("DequantizeLinear", [self.g.const("b", b_int), self.g.const("bs", b_scale), self.g.const("bz", np.zeros(len(b_int), np.int32))],
                      "dqb", axis=0)
        pads = [int(p) for p in layer.padding] * 2
        y = self.g.op("Conv", [xf, w, b], "conv", strides=[int(s) for s in layer.stride], pads=pads,
                      dilations=[int(d) for d in layer.dilation], group=int(layer.groups))
        self.fused_convs += 1
        if out_grid is None:
            return y
        return self.g.op("QuantizeLinear", [y, self.g.const("s", np.float32(out_grid[0])), self.g.const("z", np.uint8(out_grid[1]))], "q")

    def float_layer(self, layer: FloatLayer, x: str) -> str:
        m = layer.layer
        w, b = self.g.const("w", m.weight.detach().cpu().numpy()), self.g.const("b", m.bias.detach().cpu().numpy())
        if isinstance(m, nn.Linear):
            return self.g.op("Gemm", [x, w, b], "fc", transB=1)
        return self.g.op("Conv", [x, w, b], "conv", strides=list(m.stride), pads=list(m.padding) * 2, dilations=list(m.dilation),
                         group=m.groups)

    # ------------------------------------------------------------------ the graph

    def users(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """``node``'s users, looking through identities (the BatchNorms folded away)."""
        out = []
        for u in node.users:
            out += self.users(u) if isinstance(_module(u, self.model), nn.Identity) else [u]
        return out

    def act_consumers(self, node: torch.fx.Node) -> list[FrozenLayer] | None:
        """The activation-quantized layers that are ``node``'s only users, when they share one grid."""
        layers = [_module(u, self.model) for u in self.users(node)]
        if not layers or not all(isinstance(m, FrozenLayer) and m.act is not None for m in layers):
            return None
        grids = {_grid_key(m.act) for m in layers}
        return layers if len(grids) == 1 else None

    def emit(self) -> None:
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = "image"
            elif node.op == "output":
                self.output = self.as_float(self.values[node.args[0]])
            elif node in self.values:
                continue  # already produced by a fold
            else:
                self.values[node] = self.emit_node(node)

    def emit_node(self, node: torch.fx.Node):
        m = _module(node, self.model)
        args = [self.values[a] for a in node.args if isinstance(a, torch.fx.Node)]
        if isinstance(m, FrozenLayer):
            if m.act is None:
                raise ExportError("a quantized layer without an activation quantizer has no integer-kernel form; export student.onnx")
            v = args[0]
            x = v if isinstance(v, _Q) and getattr(v, "grid", None) == _grid_key(m.act) else self.act_input(v, m)
            self.layer_inputs[node.target] = x
            return self.conv_output(node, m, x)
        if isinstance(m, FloatLayer):
            x = self.layer_inputs[node.target] = self.as_float(args[0])
            return self.float_layer(m, x)
        if isinstance(m, nn.Identity):
            return args[0]
        if isinstance(m, nn.BatchNorm2d):
            raise ExportError(f"BatchNorm {node.target} could not be folded (a negative γ/σ); it has no integer-kernel form")
        if isinstance(m, PadShortcut):
            return self.pad_shortcut(m, args[0])
        if isinstance(m, nn.MaxPool2d):
            v = args[0]
            return _Q(self.max_pool(m, v.name), v.scale, v.zero) if isinstance(v, _Q) else self.max_pool(m, v)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.g.op("GlobalAveragePool", [self.as_float(args[0])], "pool")
        if isinstance(m, nn.Flatten):
            return self.g.op("Flatten", [self.as_float(args[0])], "flatten")
        if _is_relu(node, self.model):
            v = args[0]
            if isinstance(v, _Q):  # already non-negative on its grid (saturation at the zero point)
                return v
            out = self.g.op("Relu", [v], "relu")
            if len(self.users(node)) > 1 or self.act_consumers(node) is None:
                return self.quantize8(out, node)  # the residual stream: 8 bits
            return out
        if _is_add(node):
            a, b = (self.as_float(self.quantize8(v, n)) for v, n in zip(args, [a for a in node.args if isinstance(a, torch.fx.Node)]))
            out = self.g.op("Add", [a, b], "add")
            users = self.users(node)
            if len(users) == 1 and _is_relu(users[0], self.model) and self.stream_bits is not None:
                scale, _ = _grid8(0.0, self.ranges[users[0].name][1])
                q = _Q(self.g.op("QuantizeLinear", [out, self.g.const("s", np.float32(scale)), self.g.const("z", np.uint8(0))], "q"),
                       scale, 0)
                self.values[users[0]] = q  # ReLU: saturation at zero point 0
                return q
            return out
        raise ExportError(f"the integer-kernel form does not support {node.op} {node.target} (node {node.name}); export student.onnx")

    def conv_output(self, node: torch.fx.Node, m: FrozenLayer, x: _Q):
        """The conv, requantized onto the next layer's grid when BatchNorm (folded) and ReLU lead only
        there, possibly through a max-pool (the fold); onto an 8-bit grid when it feeds a residual
        addition; else left in float."""
        users = self.users(node)
        relu = users[0] if len(users) == 1 and _is_relu(users[0], self.model) else None
        pool, consumers = None, self.act_consumers(relu) if relu is not None else None
        if relu is not None and consumers is None and len(self.users(relu)) == 1:
            nxt = self.users(relu)[0]
            if isinstance(_module(nxt, self.model), nn.MaxPool2d):
                pool, consumers = nxt, self.act_consumers(nxt)
        if consumers:
            a = consumers[0].act
            self._check_act(consumers[0])
            q = self.conv(m, x, (a.in_scale, a.in_zero_int), extra_bias=a.in_scale * a.in_zero_rem)
            lo = max(a.qmin, int(round(a.in_zero_int + a.in_zero_rem)))  # the ReLU: max with round(z)
            q = self._clip(q, lo, a.qmax)
            if pool is not None:  # max-pooling the integers is max-pooling the values (the grid is monotone)
                q = self.max_pool(_module(pool, self.model), q)
            # The next layers read the integers k on their own output grid (s_out, z_out).
            result = _Q(q, a.out_scale, a.out_zero_int)
            result.grid = _grid_key(a)
            self.values[relu] = result
            if pool is not None:
                self.values[pool] = result
            return result
        if any(_is_add(u) for u in users) and self.stream_bits is not None:
            scale, zero = _grid8(*self.ranges[node.name])
            return _Q(self.conv(m, x, (scale, zero)), scale, zero)
        return self.conv(m, x, None)

    def max_pool(self, m: nn.MaxPool2d, name: str) -> str:
        k = (m.kernel_size,) * 2 if isinstance(m.kernel_size, int) else tuple(m.kernel_size)
        s = (m.stride,) * 2 if isinstance(m.stride, int) else tuple(m.stride)
        p = (m.padding,) * 2 if isinstance(m.padding, int) else tuple(m.padding)
        return self.g.op("MaxPool", [name], "maxpool", kernel_shape=list(k), strides=list(s), pads=list(p) * 2, ceil_mode=int(m.ceil_mode))

    def pad_shortcut(self, m: PadShortcut, v):
        name = v.name if isinstance(v, _Q) else v
        if m.stride > 1:
            name = self.g.op("Slice", [name, self.g.const("st", np.array([0, 0], np.int64)), self.g.const("en", np.array([2**31, 2**31], np.int64)),
                                       self.g.const("ax", np.array([2, 3], np.int64)), self.g.const("sp", np.array([m.stride] * 2, np.int64))],
                             "slice")
        if m.pad:
            pad_value = self.g.const("pv", np.uint8(v.zero) if isinstance(v, _Q) else np.float32(0))
            pads = np.array([0, m.pad // 2, 0, 0, 0, m.pad - m.pad // 2, 0, 0], np.int64)
            name = self.g.op("Pad", [name, self.g.const("pads", pads), pad_value], "pad")
        return _Q(name, v.scale, v.zero) if isinstance(v, _Q) else name

    def model_proto(self, image_shape: tuple[int, int, int]):
        from onnx import TensorProto, helper

        self.emit()
        self.g.nodes.append(helper.make_node("Identity", [self.output], ["logits"], name="logits"))  # the output's public name
        inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *image_shape])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])]
        g = helper.make_graph(self.g.nodes, "daqkd_int8", inputs, outputs, self.g.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        return model


def export_int8_onnx(frozen: nn.Module, calibration: torch.Tensor | None, path: str | Path, stream_bits: int | None = 8,
                     ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """Write the integer-kernel form of ``frozen`` (see the module's docstring), its 8-bit ranges
    calibrated on ``calibration`` images unless ``ranges`` are given; returns what it wrote, how many
    convolutions have integer kernels and the ranges (for ``int8_forward``). ``stream_bits=None``
    keeps the residual stream in float: exact, with integer kernels only for the convolutions whose
    output goes straight to the next quantizer."""
    import onnx

    exporter = Int8Exporter(frozen, calibration, stream_bits, ranges=ranges)
    model = exporter.model_proto(tuple(calibration.shape[1:]))
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return {"path": str(path), "quantized_convs": exporter.fused_convs, "ranges": exporter.ranges}


@torch.no_grad()
def int8_forward(frozen: nn.Module, images: torch.Tensor, calibration: torch.Tensor | None = None, stream_bits: int | None = 8,
                 ranges: dict[str, tuple[float, float]] | None = None):
    """The logits ``student_int8.onnx`` gives for ``images``, computed in torch (``EagerGraph``) from
    the same walk that writes the file: for the same ``calibration`` (or ``ranges``), what ONNX Runtime
    computes but at ties. Returns (logits, the EagerGraph, whose ``values`` hold every node's output
    by the name it has in the ONNX file)."""
    from daqkd.export.eager import EagerGraph

    g = EagerGraph(images)
    exporter = Int8Exporter(frozen, calibration, stream_bits, graph=g, ranges=ranges)
    exporter.emit()
    return g.value(exporter.output), g


def fused_ops(path: str | Path) -> dict[str, int]:
    """The operators ONNX Runtime runs for ``path`` after its graph optimizations (its optimized-graph
    dump): QLinearConv / QLinearAdd counts show the integer kernels."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        counts: dict[str, int] = {}
        for n in onnx.load(opts.optimized_model_filepath).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
