"""Export a trained student: a frozen integer PyTorch module and an ONNX model (QuantizeLinear /
DequantizeLinear), both checked against the training-time model on the test set.

    python -m daqkd.export outputs/train/2026-11-22_19-24-02            # a run folder
    python -m daqkd.export path/to/checkpoints/last.ckpt --bench        # + ONNX Runtime latency

What the frozen module holds, per quantized layer:
- the weight as integers k of the trained bit width (uint8 containers), with a per-output-
  channel scale s and zero point z: w = s·(k − z). The layer's learned output scale and, where the
  quantizer allows it, the following BatchNorm are folded into s and the bias;
- the input activation's grid (``Grid``): k = clamp(round(x/s_in + z_in), qmin, qmax), then
  s_out·(k − z_out).

In ONNX both become QuantizeLinear / DequantizeLinear. Their zero points must be integers of the
container type, so a fractional zero point (a learned lower clip, the mid-rise weight grid
(2k − L)/L of EWGS, PACT and DoReFa) is split into an integer part and an exact Add/Sub of the
remainder. Below 8 bits the integers sit in 8-bit containers, clipped to the b-bit range with a
Clip on the values just before QuantizeLinear: ONNX has no sub-byte types, so the file is no smaller than at 8 bits and
ONNX Runtime computes in 8 bits (README, "Exporting a student").
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from daqkd.errors import CheckpointError, DaqkdError, reported_as_one_line
from daqkd.io import atomic_torch_save, atomic_write, atomic_write_json, read_checkpoint
from daqkd.quant.base import FULL_PRECISION, Grid, Quantizer, QuantLayerMixin
from daqkd.result import RunResult

log = logging.getLogger(__name__)
OPSET = 13


class ExportError(DaqkdError, ValueError):
    """A model that cannot take the requested form: says what, why and what to do instead."""


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
    An op of its own so that ONNX gets it as QuantizeLinear/DequantizeLinear (``_quantize_act_onnx``)."""
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
    (empty when there is none). ONNX: DequantizeLinear on the stored integers (``_dequantize_weight_onnx``)."""
    shape = (-1,) + (1,) * (k.ndim - 1)
    w = (k.float() - zi.float().view(shape)) * scale.view(shape)
    return w - correction if correction.numel() else w


@dequantize_weight.register_fake
def _(k, scale, zi, correction):
    return torch.empty(k.shape, dtype=torch.float32, device=k.device)


def _const(g, value: torch.Tensor):
    return g.op("Constant", value_t=value)


def _quantize_act_onnx(g, x, s_in, zi_in, r_in, qmin, qmax, s_out, zi_out, r_out):
    from torch.onnx.symbolic_helper import _maybe_get_const

    s_in, r_in, s_out, r_out = (float(_maybe_get_const(v, "f")) for v in (s_in, r_in, s_out, r_out))
    zi_in, qmin, qmax, zi_out = (int(_maybe_get_const(v, "i")) for v in (zi_in, qmin, qmax, zi_out))
    dtype = torch.uint8
    f32 = lambda v: _const(g, torch.tensor(v, dtype=torch.float32))  # noqa: E731
    ints = lambda v: _const(g, torch.tensor(v, dtype=dtype))  # noqa: E731
    if r_in != 0:
        x = g.op("Add", x, f32(s_in * r_in))
    # The b-bit range as a Clip on the input's float values (ONNX Runtime's QDQ optimizers do not keep
    # a Clip on the integers: with one, the optimized graph disagreed with the unoptimized one).
    x = g.op("Clip", x, f32(s_in * (qmin - zi_in)), f32(s_in * (qmax - zi_in)))
    k = g.op("QuantizeLinear", x, f32(s_in), ints(zi_in))
    y = g.op("DequantizeLinear", k, f32(s_out), ints(zi_out))
    if r_out != 0:
        y = g.op("Sub", y, f32(s_out * r_out))
    return y


def _dequantize_weight_onnx(g, k, scale, zi, correction):
    from torch.onnx.symbolic_helper import _get_tensor_sizes

    w = g.op("DequantizeLinear", k, scale, zi, axis_i=0)
    sizes = _get_tensor_sizes(correction)
    return g.op("Sub", w, correction) if sizes and sizes[0] > 0 else w


torch.onnx.register_custom_op_symbolic("daqkd::quantize_act", _quantize_act_onnx, OPSET)
torch.onnx.register_custom_op_symbolic("daqkd::dequantize_weight", _dequantize_weight_onnx, OPSET)


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
    return student.eval(), info


def export_onnx(model: nn.Module, path: str | Path, image_shape: tuple[int, int, int]) -> Path:
    """``model`` as ONNX (opset 13, dynamic batch), checked with onnx.checker."""
    import warnings

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        model = model.eval().requires_grad_(False)
        torch.onnx.export(model, (torch.zeros(1, *image_shape),), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    os.replace(tmp, path)
    return path


def onnx_session(path: str | Path, fused: bool = False):
    """An ONNX Runtime CPU session. ``fused=False`` turns off ORT's QDQ fusion (integer kernels), so
    Q/DQ run as written; with it on (ORT's default), the fused kernels of onnxruntime 1.32 disagreed
    with the graph's own semantics (91 % top-1 agreement for a W2A2 LSQ ResNet-20), so agreement is
    reported both ways."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    if not fused:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def logits(model_or_session, loader) -> torch.Tensor:
    """The outputs of a torch module or an ONNX Runtime session over ``loader``'s images."""
    out = []
    for x, _ in loader:
        if isinstance(model_or_session, nn.Module):
            out.append(model_or_session(x))
        else:
            out.append(torch.from_numpy(model_or_session.run(None, {"image": x.numpy()})[0]))
    return torch.cat(out)


def predictions(model_or_session, loader) -> torch.Tensor:
    return logits(model_or_session, loader).argmax(1)


def onnx_bench(path: str | Path, image_shape: tuple[int, int, int], repeats: int = 50, fused: bool = False) -> dict:
    """Batch-1 latency (median ms) and batch-64 throughput (images/s) in ONNX Runtime on the CPU."""
    import numpy as np

    session = onnx_session(path, fused)
    one, many = np.random.rand(1, *image_shape).astype("float32"), np.random.rand(64, *image_shape).astype("float32")
    for _ in range(5):
        session.run(None, {"image": one})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"image": one})
        times.append(time.perf_counter() - t)
    session.run(None, {"image": many})
    start, n = time.perf_counter(), max(3, repeats // 5)
    for _ in range(n):
        session.run(None, {"image": many})
    return {"latency_b1_ms": 1000 * statistics.median(times), "throughput_b64_img_s": 64 * n / (time.perf_counter() - start),
            "size_mb": Path(path).stat().st_size / 2**20}


def locate_run(target: str | Path) -> tuple[dict, Path]:
    """(the run's resolved config, the student checkpoint) from a run folder or one of its .ckpt files."""
    target = Path(target)
    if not target.exists():
        raise CheckpointError(f"{target} does not exist; pass a run folder (with results.json) or a .ckpt inside one")
    folder = target if target.is_dir() else (target.parent.parent if target.parent.name == "checkpoints" else target.parent)
    results = folder / "results.json"
    config, run = None, None
    if results.is_file():
        run = RunResult.load(results)
        config = run.config or None
    elif (folder / ".hydra" / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"), resolve=False)
    if config is None:
        raise CheckpointError(f"no config next to {target}: expected {results} or {folder}/.hydra/config.yaml (pass the run folder "
                              "that daqkd.run wrote)")
    if target.is_dir():
        ckpt = None
        if run is not None and run.student is not None:
            ckpt = run.student.ckpt
        ckpt = Path(ckpt) if ckpt and Path(ckpt).is_file() else folder / "checkpoints" / "last.ckpt"
    else:
        ckpt = target
    if not ckpt.is_file():
        raise CheckpointError(f"no student checkpoint in {folder}/checkpoints; did the run finish? (python -m daqkd.run ... ckpt_path=last)")
    return config, ckpt


def load_student(config: dict, ckpt: Path) -> tuple[nn.Module, nn.Module]:
    """(the training-time student, the teacher architecture with the run's teacher weights) of a run."""
    from daqkd import build
    from daqkd.io import load_weights

    cfg = OmegaConf.create(config)
    teacher = build.build_model(cfg)
    teacher_ckpt = (config.get("teacher") or {}).get("ckpt")
    student = build.build_student(cfg, teacher).eval()
    state = read_checkpoint(ckpt)
    weights = {k[len("student."):]: v for k, v in state.get("state_dict", {}).items() if k.startswith("student.")}
    if not weights:
        raise CheckpointError(f"{ckpt} holds no student weights (keys 'student.*'); pass a checkpoint written by daqkd.run")
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not fit the run's student ({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
                              f"{(missing or unexpected)[:3]}); was it written by another model or quantizer config?")
    if teacher_ckpt and Path(teacher_ckpt).is_file():
        load_weights(teacher, teacher_ckpt)
    return student, teacher.eval()


def save_weights(frozen: nn.Module, path: str | Path) -> Path:
    """The frozen module's numbers as a plain numpy archive (no pickle): for each quantized layer its
    integer weights packed 2 or 4 bits each below 8 bits (``<layer>.weight_packed``, with
    ``.weight_shape`` and ``.weight_bits``), the per-channel scales, zero points and correction, the
    bias, and its activation grid (``<layer>.act`` = in_scale, in_zero, out_scale, out_zero, qmin,
    qmax); float layers' weights and biases as they are; a BatchNorm left unfolded as its per-channel
    affine map y = bn_scale·x + bn_shift. ``load_weights_file`` unpacks it."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    for name, m in frozen.named_modules():
        if isinstance(m, FrozenLayer):
            if m.quantized_weight:
                arrays[f"{name}.weight_packed"] = pack(m.weight_int, m.weight_bits).numpy()
                arrays[f"{name}.weight_shape"] = np.array(m.weight_int.shape, dtype=np.int64)
                arrays[f"{name}.weight_bits"] = np.array(m.weight_bits, dtype=np.int64)
                arrays[f"{name}.weight_scale"] = m.weight_scale.numpy()
                arrays[f"{name}.weight_zero"] = (m.weight_zero_int.double() + m.weight_zero_rem).numpy()
            else:
                arrays[f"{name}.weight"] = m.weight_float.numpy()
            arrays[f"{name}.bias"] = m.bias.numpy()
            if m.act is not None:
                a = m.act
                arrays[f"{name}.act"] = np.array([a.in_scale, a.in_zero_int + a.in_zero_rem, a.out_scale, a.out_zero_int + a.out_zero_rem,
                                                  a.qmin, a.qmax], dtype=np.float64)
        elif isinstance(m, FloatLayer):
            arrays[f"{name}.weight"] = m.layer.weight.detach().numpy()
            arrays[f"{name}.bias"] = m.layer.bias.detach().numpy()
        elif isinstance(m, nn.BatchNorm2d):  # one that could not be folded (a negative γ/σ) stays as it is
            factor, shift = batchnorm_affine(m)
            arrays[f"{name}.bn_scale"], arrays[f"{name}.bn_shift"] = factor.detach().numpy(), (shift - m.running_mean * factor).detach().numpy()
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return Path(path)


def load_weights_file(path: str | Path) -> dict:
    """``save_weights``'s archive with every packed weight unpacked: {name: numpy array}; a quantized
    layer's ``<layer>.weight_int`` holds its integers, uint8, in the layer's weight shape."""
    import numpy as np

    with np.load(path) as z:
        arrays = dict(z)
    for key in [k for k in arrays if k.endswith(".weight_packed")]:
        layer = key.removesuffix(".weight_packed")
        shape = tuple(int(v) for v in arrays.pop(f"{layer}.weight_shape"))
        arrays[f"{layer}.weight_int"] = unpack(torch.from_numpy(arrays.pop(key)), int(arrays[f"{layer}.weight_bits"]), shape).numpy()
    return arrays


def export(target: str | Path, out_dir: str | Path | None = None, onnx: bool = True, bench: bool = False,
           test_subset: int | None = None) -> dict:
    """Freeze and export the student of a run; returns (and writes to export.json) what was checked."""
    from daqkd import build

    config, ckpt = locate_run(target)
    out = Path(out_dir) if out_dir else ckpt.parent.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    student, teacher = load_student(config, ckpt)
    frozen, info = freeze(student)
    cfg = OmegaConf.create(config)
    dm = build.build_datamodule(cfg)
    if test_subset:
        dm.test_subset = test_subset
    dm.setup("test")
    shape = (dm.in_channels, dm.image_size, dm.image_size)
    loader = dm.test_dataloader()
    reference = predictions(student, loader)
    report = {"checkpoint": str(ckpt), "bits_w": cfg.bits.w, "bits_a": cfg.bits.a, "quantizer": cfg.quantizer.name, **info,
              "test_images": len(reference)}
    report["agreement_frozen"] = float((predictions(frozen, loader) == reference).float().mean())
    atomic_torch_save(frozen, out / "student_int.pt")
    save_weights(frozen, out / "student_weights.npz")
    report["files"] = {"frozen": str(out / "student_int.pt"), "weights": str(out / "student_weights.npz")}
    if onnx:
        export_onnx(frozen, out / "student.onnx", shape)
        report["files"]["onnx"] = str(out / "student.onnx")
        for key, fused in (("agreement_onnx", False), ("agreement_onnx_fused", True)):
            report[key] = float((predictions(onnx_session(out / "student.onnx", fused), loader) == reference).float().mean())
        from daqkd.export_int8 import export_int8_onnx, fused_ops

        try:
            int8 = export_int8_onnx(frozen, dm.calibration_batch(512), out / "student_int8.onnx")
        except ExportError as e:
            report["int8"] = {"skipped": str(e)}
        else:
            report["files"]["int8"] = int8["path"]
            test_acc = lambda preds: float((preds == labels).float().mean())  # noqa: E731
            labels = torch.cat([y for _, y in loader])
            int8_preds = predictions(onnx_session(out / "student_int8.onnx", fused=True), loader)
            report["int8"] = {"quantized_convs": int8["quantized_convs"], "ort_ops": fused_ops(out / "student_int8.onnx"),
                              "agreement": float((int8_preds == reference).float().mean()),
                              "test_acc": test_acc(int8_preds), "student_test_acc": test_acc(reference)}
    if bench:
        export_onnx(teacher, out / "teacher_fp.onnx", shape)
        report["bench"] = {"teacher_fp": onnx_bench(out / "teacher_fp.onnx", shape),
                           "student": onnx_bench(out / "student.onnx", shape),
                           "student_fused": onnx_bench(out / "student.onnx", shape, fused=True)}
        if (out / "student_int8.onnx").is_file():
            report["bench"]["student_int8"] = onnx_bench(out / "student_int8.onnx", shape, fused=True)
    fp_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    report["bytes"] = {"teacher_fp32_weights": fp_bytes, **{k: Path(v).stat().st_size for k, v in report["files"].items()}}
    atomic_write_json(out / "export.json", report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m daqkd.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run folder written by daqkd.run, or a .ckpt inside one")
    parser.add_argument("--out", help="where to write (default: <run folder>/export)")
    parser.add_argument("--no-onnx", action="store_true", help="only the frozen PyTorch module")
    parser.add_argument("--bench", action="store_true", help="ONNX Runtime batch-1 latency, batch-64 throughput and size, FP vs student")
    parser.add_argument("--test-subset", type=int, help="check agreement on this many test images (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with reported_as_one_line():
        report = export(args.target, args.out, onnx=not args.no_onnx, bench=args.bench, test_subset=args.test_subset)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
