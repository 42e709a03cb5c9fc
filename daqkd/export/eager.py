"""The integer exporter's graph computed in PyTorch as it is written, node by node, with the fusions
ONNX Runtime makes of it: the groundwork of ``quantizer.deploy=int8`` (a student trained through
the very arithmetic its export runs).

``daqkd.export.int8.Int8Exporter`` writes ``student_int8.onnx`` through a graph builder with three
calls (``name``, ``const``, ``op``). ``EagerGraph`` answers the same calls by computing each node at
once on a batch of images, so that one walk of the student (one place deciding the graph) gives
either the ONNX file or its values in torch. The values follow ONNX Runtime's QDQ fusions, which
decide what is computed in integers and what in float:

- DequantizeLinear is lazy (``Dq``): it stays integers and a grid until a float operator reads it;
- DequantizeLinear → Conv → QuantizeLinear, the input uint8 on a per-tensor grid, the weight int8
  per channel and the bias int32, is QLinearConv (``daqkd.quant.deploy.qlinear_conv``); without the
  QuantizeLinear the convolution runs in float on the dequantized tensors, as ONNX Runtime then does;
- DequantizeLinear ×2 → Add → QuantizeLinear is QLinearAdd (``daqkd.quant.deploy.qlinear_add``);
- QuantizeLinear of a float is MLAS's fl(x/s), rounded half to even (``deploy.quantize_linear``);
- Clip, MaxPool, Pad and Slice on integers keep the grid; Relu, GlobalAveragePool, Flatten, Gemm
  and Conv on floats are the float32 operators.

Integers are held in float32 tensors (exact), so the same code runs on any device. Against ONNX
Runtime the integers are equal except at ties (a float convolution sums in its own order; see
``daqkd.export.reference``): tests/test_reference.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from daqkd.export.replay import conv_kwargs, max_pool, pad, scalar, slice_
from daqkd.quant import deploy


@dataclass
class QInt:
    """A uint8 tensor's integers (in float32), from a QuantizeLinear on grid (scale, zero); what they
    mean is the DequantizeLinear's grid that reads them (``Dq``), which may differ (an activation
    quantizer's input and output grids)."""

    q: torch.Tensor
    scale: float
    zero: int


@dataclass
class Dq:
    """DequantizeLinear, not yet computed: integers ``q`` (a QInt or a constant), scale and zero point
    (per tensor, or per channel along ``axis``)."""

    q: object
    scale: np.ndarray
    zero: np.ndarray
    axis: int = 1


@dataclass
class Pending:
    """A Conv or Add of dequantized inputs, computed by the operator that reads it (QuantizeLinear fuses it)."""

    op: str
    inputs: list
    attrs: dict


class EagerGraph:
    """The builder interface of ``int8._Graph`` (``name``, ``const``, ``op``), evaluating each node on
    the graph's input at once; ``value(name)`` is a node's output as a float tensor (dequantized)."""

    def __init__(self, images: torch.Tensor, input_name: str = "image"):
        self.count = 0
        self.device = images.device
        self.values: dict[str, object] = {input_name: images.to(torch.float32)}

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        n = self.name(base)
        self.values[n] = np.asarray(array)
        return n

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.values[out] = self._run(op_type, [self.values[i] for i in inputs], attrs)
        return out

    # ------------------------------------------------------------------ values

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    def floats(self, v) -> torch.Tensor:
        """A value as the float32 tensor ONNX Runtime computes for it."""
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, np.ndarray):
            return self._tensor(v)
        if isinstance(v, QInt):
            raise TypeError("a uint8 tensor read as float without a DequantizeLinear")
        if isinstance(v, Dq):
            q = v.q.q if isinstance(v.q, QInt) else self._tensor(v.q)
            shape = [1] * q.ndim
            if np.size(v.scale) > 1:
                shape[v.axis] = -1
            s, z = self._tensor(v.scale).reshape(shape), self._tensor(v.zero).reshape(shape)
            return (q - z) * s  # one float32 multiply of exact integers, as the kernel (or the constant folding) does
        xs = [self.floats(i) for i in v.inputs]
        if v.op == "Conv":
            return F.conv2d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, **conv_kwargs(v.attrs))
        return xs[0] + xs[1]  # Add

    def value(self, name: str) -> torch.Tensor:
        return self.floats(self.values[name])

    # ------------------------------------------------------------------ operators

    def _run(self, op: str, x: list, at: dict):
        if op == "DequantizeLinear":
            return Dq(x[0], np.asarray(x[1]), np.asarray(x[2]), at.get("axis", 1))
        if op == "QuantizeLinear":
            return self._quantize(x[0], scalar(x[1]), int(scalar(x[2])))
        if op == "Conv":
            if all(isinstance(i, Dq) for i in x):
                return Pending("Conv", x, at)
            w = self.floats(x[1])
            return F.conv2d(self.floats(x[0]), w, self.floats(x[2]) if len(x) > 2 else None, **conv_kwargs(at))
        if op == "Add":
            if all(isinstance(i, Dq) and isinstance(i.q, QInt) for i in x):
                return Pending("Add", x, at)
            return self.floats(x[0]) + self.floats(x[1])
        if op == "Clip":
            v = x[0]
            return QInt(torch.clamp(v.q, scalar(x[1]), scalar(x[2])), v.scale, v.zero)
        if op == "MaxPool":
            return self._on_integers(x[0], lambda t: max_pool(t, at))
        if op == "Pad":
            return self._on_integers(x[0], lambda t: pad(t, x[1], scalar(x[2])))
        if op == "Slice":
            return self._on_integers(x[0], lambda t: slice_(t, *x[1:]))
        if op == "Relu":
            return F.relu(self.floats(x[0]))
        if op == "GlobalAveragePool":
            return self.floats(x[0]).mean(dim=(2, 3), keepdim=True)
        if op == "Flatten":
            return torch.flatten(self.floats(x[0]), at.get("axis", 1))
        if op == "Gemm":
            w = self.floats(x[1])
            return F.linear(self.floats(x[0]), w if at.get("transB", 0) else w.t(), self.floats(x[2]))
        if op == "Identity":
            return x[0]
        raise NotImplementedError(f"the eager int8 graph has no {op}")

    def _on_integers(self, v, fn):
        return QInt(fn(v.q), v.scale, v.zero) if isinstance(v, QInt) else fn(self.floats(v))

    def _quantize(self, v, scale: float, zero: int) -> QInt:
        if isinstance(v, Pending) and v.op == "Conv" and isinstance(v.inputs[0].q, QInt):
            x, w, b = v.inputs
            if np.any(w.zero != 0) or np.any(b.zero != 0):
                raise NotImplementedError("QLinearConv with a non-zero weight or bias zero point")
            q = deploy.qlinear_conv(x.q.q, int(scalar(x.zero)), np.float32(scalar(x.scale)), self._tensor(w.q), self._tensor(w.scale),
                                    self._tensor(b.q), np.float32(scale), zero, **conv_kwargs(v.attrs))
            return QInt(q, scale, zero)
        if isinstance(v, Pending) and v.op == "Add":
            a, b = v.inputs
            q = deploy.qlinear_add(a.q.q, np.float32(scalar(a.scale)), int(scalar(a.zero)), b.q.q, np.float32(scalar(b.scale)),
                                   int(scalar(b.zero)), np.float32(scale), zero)
            return QInt(q, scale, zero)
        return QInt(deploy.quantize_linear(self.floats(v), np.float32(scale), zero), scale, zero)
