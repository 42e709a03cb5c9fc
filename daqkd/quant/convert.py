"""A trained student as fixed-point layers: the mirror of ``quantize_model``.

``freeze(student)`` replaces every quantized conv/linear layer by a ``FrozenLayer`` and every float
one by a ``FloatLayer``, and folds each BatchNorm that follows a conv into that layer's scales and
bias. Per quantized layer:
- the weight as integers k of the trained bit width (uint8 containers; packed 2 or 4 bits each when
  pickled), with a per-output-channel scale s and zero point z: w = s·(k − z). The layer's learned
  output scale and, where the quantizer allows it, the following BatchNorm are folded into s and the
  bias;
- the input activation's grid (``Grid``): k = clamp(round(x/s_in + z_in), qmin, qmax), then
  s_out·(k − z_out).

Both run through two custom ops (``daqkd::quantize_act``, ``daqkd::dequantize_weight``) so that the
ONNX exporter (``daqkd.export.qdq``) writes them as QuantizeLinear / DequantizeLinear. Their zero
points are kept as an integer part and a remainder (``split_zero``), as ONNX needs integer ones.
"""
from __future__ import annotations

import copy
import logging
import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from daqkd.errors import ExportError
from daqkd.quant.base import FULL_PRECISION, Grid, Quantizer, QuantLayerMixin

log = logging.getLogger(__name__)


def unsigned(grid: Grid) -> Grid:
    """The same grid with integers shifted into [0, qmax − qmin] (the zero points move with them),
    so that every export uses uint8 containers: ONNX Runtime's optimized CPU kernels computed a
    different Conv from int8 (signed LSQ) weights than its unoptimized ones (91 % top-1 agreement
    at W2A2), and agree with PyTorch on uint8."""
    span = grid.qmax - grid.qmin
    if span > 255:
        raise ExportError(f"integers in [{grid.qmin}, {grid.qmax}] fit no 8-bit container; ONNX QuantizeLinear holds 256 values. "
                          "Export a model trained at ≤ 8 bits")
    shift = -grid.qmin
    return Grid(grid.in_scale, grid.in_zero + shift, grid.out_scale, grid.out_zero + shift, 0, span)


def split_zero(zero: float) -> tuple[int, float]:
    """A fractional zero point z as (its integer part zi, clamped to uint8, and z − zi)."""
    zi = int(min(max(round(zero), 0), 255))
    return zi, float(zero - zi)


@torch.library.custom_op("daqkd::quantize_act", mutates_args=())
def quantize_act(x: torch.Tensor, s_in: float, zi_in: int, r_in: float, qmin: int, qmax: int,
                 s_out: float, zi_out: int, r_out: float) -> torch.Tensor:
    """k = clamp(round((x + s_in·r_in)/s_in) + zi_in, qmin, qmax); y = s_out·(k − zi_out) − s_out·r_out,
    where z = zi + r splits each zero point (= s_out·(round(x/s_in + z_in) − z_out), clamped).
    An op of its own so that ONNX gets it as QuantizeLinear/DequantizeLinear (``daqkd.export.qdq``)."""
    v = x + s_in * r_in if r_in != 0 else x
    v = v.clamp(s_in * (qmin - zi_in), s_in * (qmax - zi_in))  # the b-bit range, before rounding (as ONNX does)
    k = torch.round(v / s_in) + zi_in
    y = (k - zi_out) * s_out
    return y - s_out * r_out if r_out != 0 else y


@quantize_act.register_fake
def _(x, s_in, zi_in, r_in, qmin, qmax, s_out, zi_out, r_out):
    return torch.empty_like(x)


@torch.library.custom_op("daqkd::dequantize_weight", mutates_args=())
def dequantize_weight(k: torch.Tensor, scale: torch.Tensor, zi: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """w = s·(k − zi) − c per output channel (axis 0); c = s·r, the fractional part of the zero point
    (empty when there is none). ONNX: DequantizeLinear on the stored integers (``daqkd.export.qdq``)."""
    shape = (-1,) + (1,) * (k.ndim - 1)
    w = (k.float() - zi.float().view(shape)) * scale.view(shape)
    return w - correction if correction.numel() else w


@dequantize_weight.register_fake
def _(k, scale, zi, correction):
    return torch.empty(k.shape, dtype=torch.float32, device=k.device)


def container_bits(bits: int) -> int:
    """Bits per stored weight: 2, 4 or 8 (3 bits go in 4-bit slots; 5–7 in bytes)."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def pack(k: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers 0 ≤ k < 2^bits as a flat uint8 tensor of ``container_bits(bits)`` bits each, first value
    in the lowest bits of a byte."""
    width = container_bits(bits)
    flat = k.flatten().to(torch.uint8)
    if width == 8:
        return flat.clone()
    per = 8 // width
    padded = torch.zeros(-(-len(flat) // per) * per, dtype=torch.uint8)
    padded[: len(flat)] = flat
    slots = padded.view(-1, per).to(torch.int32) << (torch.arange(per, dtype=torch.int32) * width)
    return slots.sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``pack``'s inverse: uint8 integers of ``shape``."""
    width = container_bits(bits)
    n = math.prod(shape)
    if width == 8:
        return packed[:n].view(shape).clone()
    per = 8 // width
    values = (packed.to(torch.int32)[:, None] >> (torch.arange(per, dtype=torch.int32) * width)) & ((1 << width) - 1)
    return values.flatten()[:n].to(torch.uint8).view(shape)


class FrozenActivation(nn.Module):
    """An activation quantizer as fixed integers and scales (``Grid``), kept as plain numbers."""

    def __init__(self, grid: Grid, bits: int):
        super().__init__()
        grid = unsigned(grid)
        self.bits, self.qmin, self.qmax = bits, int(grid.qmin), int(grid.qmax)
        for scale, zero in ((grid.in_scale, grid.in_zero), (grid.out_scale, grid.out_zero)):
            if not (math.isfinite(scale) and scale > 0 and math.isfinite(zero)):
                raise ExportError(f"an activation grid has scale {scale} and zero point {zero}; only a positive finite scale can be "
                                  "exported (the quantizer's range collapsed during training: retrain with a lower quantizer lr)")
        self.in_scale, self.out_scale = float(grid.in_scale), float(grid.out_scale)
        self.in_zero_int, self.in_zero_rem = split_zero(grid.in_zero)
        self.out_zero_int, self.out_zero_rem = split_zero(grid.out_zero)

    def forward(self, x):
        return quantize_act(x, self.in_scale, self.in_zero_int, self.in_zero_rem, self.qmin, self.qmax,
                                 self.out_scale, self.out_zero_int, self.out_zero_rem)

    def extra_repr(self):
        return f"bits={self.bits}, k∈[{self.qmin}, {self.qmax}], scale={self.in_scale:.4g}, zero={self.in_zero_int + self.in_zero_rem:.4g}"


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = factor·x + (shift − factor·mean): (factor, shift) per channel."""
    factor = 1 / torch.sqrt(bn.running_var + bn.eps)
    if not bn.affine:
        return factor, torch.zeros_like(factor)
    return bn.weight.detach() * factor, bn.bias.detach()


class FrozenLayer(nn.Module):
    """A quantized conv or linear layer with integer weights: y = op(act(x), s·(k − z)) + bias."""

    def __init__(self, layer: QuantLayerMixin):
        super().__init__()
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        if self.kind == "conv":
            if layer.padding_mode != "zeros":
                raise ExportError(f"a conv with padding_mode={layer.padding_mode!r} cannot be exported; only zero padding is supported")
            self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        aq, wq = layer.act_quantizer, layer.weight_quantizer
        self.act = FrozenActivation(_grid(aq), aq.bits) if aq is not None else None
        alpha = float(layer.output_scale.detach()) if layer.output_scale is not None else 1.0
        out_channels = layer.weight.shape[0]
        with torch.no_grad():
            if wq is None:
                self.weight_bits = FULL_PRECISION
                self.register_buffer("weight_float", layer.weight.detach().float() * alpha)
            else:
                self.weight_bits = wq.bits
                grid = unsigned(_grid(wq))
                y = wq.eval()(layer.weight.detach().float())
                k = torch.round(y / grid.out_scale + grid.out_zero)
                if not torch.allclose((k - grid.out_zero) * grid.out_scale, y, atol=1e-5 * max(1.0, float(y.abs().max()))):
                    raise ExportError(f"{type(wq).__name__}'s weights do not lie on the grid it reports ({grid}); it cannot be exported "
                                      "as integers")
                if float(k.min()) < grid.qmin or float(k.max()) > grid.qmax:
                    raise ExportError(f"{type(wq).__name__}'s weight integers leave [{grid.qmin}, {grid.qmax}]")
                dtype = torch.uint8
                zi, self.weight_zero_rem = split_zero(grid.out_zero)
                self.register_buffer("weight_int", k.to(dtype))
                self.register_buffer("weight_scale", torch.full((out_channels,), grid.out_scale * alpha))
                self.register_buffer("weight_zero_int", torch.full((out_channels,), zi, dtype=dtype))
                self.register_buffer("weight_correction", torch.empty(0))
                self.weight_range = (grid.qmin, grid.qmax)
                self._update_correction()
        bias = layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(out_channels)
        self.register_buffer("bias", bias)

    def _update_correction(self) -> None:
        """c = s·r per channel, the fractional part of the weight zero point (recomputed when s changes)."""
        if self.weight_zero_rem != 0:
            shape = (-1,) + (1,) * (self.weight_int.ndim - 1)
            self.weight_correction = (self.weight_scale * self.weight_zero_rem).view(shape).clone()

    @property
    def quantized_weight(self) -> bool:
        return self.weight_bits != FULL_PRECISION

    def weight(self) -> torch.Tensor:
        if not self.quantized_weight:
            return self.weight_float
        return dequantize_weight(self.weight_int, self.weight_scale, self.weight_zero_int, self.weight_correction)

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> bool:
        """Fold an eval-mode BatchNorm after this layer into the weight scales and the bias.
        Integer weights keep their integers, so this needs every channel's factor γ/σ > 0 (a
        DequantizeLinear scale is positive); otherwise the BatchNorm stays (returns False)."""
        factor, shift = batchnorm_affine(bn)
        if self.quantized_weight:
            if not bool((factor > 0).all()):
                return False
            self.weight_scale.mul_(factor)
            self._update_correction()
        else:
            self.weight_float.mul_(factor.view(-1, *([1] * (self.weight_float.ndim - 1))))
        self.bias.copy_((self.bias - bn.running_mean) * factor + shift)
        return True

    def __getstate__(self):
        """Pickled (``student_int.pt``), a layer keeps its integer weights packed, 2 or 4 bits each
        below 8 bits (``pack``); ``__setstate__`` unpacks them on load."""
        state = self.__dict__.copy()
        buffers = dict(state["_buffers"])
        k = buffers.get("weight_int")
        if k is not None and container_bits(self.weight_bits) < 8:
            state["_packed_weight"] = (pack(k, self.weight_bits), tuple(k.shape))
            buffers["weight_int"] = None
        state["_buffers"] = buffers
        return state

    def __setstate__(self, state):
        packed = state.pop("_packed_weight", None)
        super().__setstate__(state)
        if packed is not None:
            self._buffers["weight_int"] = unpack(packed[0], self.weight_bits, packed[1])

    def forward(self, x):
        if self.act is not None:
            x = self.act(x)
        w = self.weight()
        if self.kind == "conv":
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, self.bias)

    def extra_repr(self):
        return f"{self.kind}, W{self.weight_bits}"


class FloatLayer(nn.Module):
    """A full-precision conv/linear (first and last layers under first_last=fp), with BN folding."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        if self.layer.bias is None:
            self.layer.bias = nn.Parameter(torch.zeros(self.layer.weight.shape[0]))

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> bool:
        factor, shift = batchnorm_affine(bn)
        self.layer.weight.mul_(factor.view(-1, *([1] * (self.layer.weight.ndim - 1))))
        self.layer.bias.copy_((self.layer.bias - bn.running_mean) * factor + shift)
        return True

    def forward(self, x):
        return self.layer(x)


def _grid(q: Quantizer) -> Grid:
    try:
        return q.grid()
    except NotImplementedError as e:
        raise ExportError(f"{e}. Implement Quantizer.grid() for it (see daqkd/quant/base.py), or train with quantizer=ewgs|lsq|pact|dorefa") from None


class _LayerTracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, (QuantLayerMixin, nn.Conv2d, nn.Linear, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm2d reads a conv's output and nothing else does,
    and each module is called once, found by tracing the model with torch.fx."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as e:  # a model fx cannot trace keeps its BatchNorms (still exact, just not folded)
        log.warning("BatchNorm not folded: torch.fx cannot trace %s (%s)", type(model).__name__, e)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(model.get_submodule(src.target), nn.Conv2d) and calls[src.target] == calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def freeze(student: nn.Module) -> tuple[nn.Module, dict]:
    """The integer module of a trained student (eval mode, BatchNorm folded where allowed), and a
    summary: layers, BatchNorms folded and kept, integer weight count."""
    student = copy.deepcopy(student).eval()
    for m in student.modules():  # the copy is a plain module: no hooks (feature taps, deploy=int8's forward) ride along
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    student.__dict__.pop("int8", None)
    pairs = conv_bn_pairs(student)
    frozen = {}
    for name, m in list(student.named_modules()):
        if isinstance(m, QuantLayerMixin):
            frozen[name] = FrozenLayer(m)
        elif type(m) in (nn.Conv2d, nn.Linear):
            frozen[name] = FloatLayer(m)
    for name, layer in frozen.items():
        _set(student, name, layer)
    folded, kept = [], []
    for conv, bn in pairs:
        if frozen[conv].fold_batchnorm(student.get_submodule(bn)):
            _set(student, bn, nn.Identity())
            folded.append(bn)
        else:
            kept.append(bn)
    info = {
        "layers": len(frozen),
        "quantized_layers": sum(isinstance(m, FrozenLayer) and m.quantized_weight for m in frozen.values()),
        "batchnorm_folded": len(folded),
        "batchnorm_kept": kept,
        "integer_weights": sum(int(m.weight_int.numel()) for m in frozen.values() if isinstance(m, FrozenLayer) and m.quantized_weight),
    }
    return student.eval().requires_grad_(False), info  # frozen: nothing to train, outputs track no gradient
