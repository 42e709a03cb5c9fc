"""``quantizer.deploy=int8``: a student whose forward is its own integer export.

Once ``activate``d, every forward of the student returns the logits that ``student_int8.onnx``
would give for the batch, computed in torch by the exporter's own walk (``daqkd.export.eager``), and
the gradients of the fake-quantized student, straight through:

- the student is frozen as the export freezes it (``freeze``: BatchNorm folded with its running
  statistics into per-channel weight scales and the bias, the bias then rounded to int32 units of
  x_scale·w_scale, the weights kept on their integer grids), and the integer graph is computed on the
  batch with ONNX Runtime's arithmetic (QLinearConv, QLinearAdd, the 8-bit residual stream on the
  ranges fixed at activation);
- the student's own (fake-quantized) forward runs too, with BatchNorm in eval mode, and at every
  point where the integer graph hands a layer its input (each activation quantizer's output, each
  full-precision layer's input) and at the logits, its value is replaced by the integer graph's:
  v + (v_int − v).detach(). So the forward value is the integer model's everywhere it matters, and
  the gradient is the fake-quantized network's (straight through the roundings the export adds:
  the bias's, the requantization's, the stream's), EWGS's scaling included.

At activation the BatchNorm statistics are re-estimated on training batches through the quantized
student (the teacher's statistics, which the student starts from, describe another network), then
frozen, and the 8-bit ranges of the residual stream are calibrated as the export calibrates them.
The ranges travel in the checkpoint; the export of a ``deploy=int8`` run uses them, so that the file
and the trained model compute the same integers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from daqkd.errors import ExportError
from daqkd.export import reference, replay
from daqkd.export.eager import Dq, EagerGraph
from daqkd.export.int8 import _Q, Int8Exporter
from daqkd.quant.base import QuantLayerMixin
from daqkd.quant.convert import freeze

DEPLOY_MODES = ("none", "int8")
MAX_TIE_SHARE = 1e-5  # seen: 1 tie in 112,795,648 integers (512 test images, EWGS W4A4)


def check_deploy(mode: str) -> str:
    """The one check of ``quantizer.deploy``."""
    if mode not in DEPLOY_MODES:
        raise ValueError(f"quantizer.deploy={mode!r} is not a mode; expected one of {', '.join(DEPLOY_MODES)}, e.g. quantizer.deploy=int8")
    return mode


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Every BatchNorm's running statistics recomputed as the plain average over ``batches`` (train-mode
    forwards, nothing else changed)."""
    bns = batchnorms(model)
    saved = [(bn.momentum, bn.training) for bn in bns]
    was_training = model.training
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average
            bn.train()
        for x in batches:
            model(x)
    finally:
        model.train(was_training)
        for bn, (momentum, training) in zip(bns, saved):
            bn.momentum = momentum
            bn.train(training)


def _substitute(v: torch.Tensor, value: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` in the forward, exactly, with ``v``'s gradient (straight through), in ``dtype``
    (``v``'s unless given)."""
    dtype = dtype or v.dtype
    return value.to(dtype) + (v - v.detach()).to(dtype)


class Int8Forward:
    """Hooks that make ``student``'s forward its integer export's (the module's docstring). ``ranges``:
    the 8-bit ranges of the stream (fx node name → (lo, hi)), fixed."""

    def __init__(self, student: nn.Module, ranges: dict[str, tuple[float, float]], stream_bits: int | None = 8):
        self.student, self.ranges, self.stream_bits = student, dict(ranges), stream_bits
        self._values: dict[str, torch.Tensor] | None = None
        self._logits: torch.Tensor | None = None
        self._targets: dict[int, str] = {}
        self.handles = [student.register_forward_pre_hook(self._before), student.register_forward_hook(self._after)]
        for name, m in student.named_modules():
            if isinstance(m, QuantLayerMixin) and m.act_quantizer is not None:
                self._targets[id(m.act_quantizer)] = name
                self.handles.append(m.act_quantizer.register_forward_hook(self._replace_output))
            elif type(m) in (nn.Conv2d, nn.Linear) or (isinstance(m, QuantLayerMixin) and m.act_quantizer is None):
                self._targets[id(m)] = name
                self.handles.append(m.register_forward_pre_hook(self._replace_input))

    def __deepcopy__(self, memo):  # a copy of the student (``freeze``) shares the hooks' owner, which ignores it
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def integer_graph(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The integer model's logits on ``x`` and each layer's input (by module name), as float32
        (autocast off: mixed precision would change the integers)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._integer_graph(x.float())

    def _integer_graph(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        frozen, _ = freeze(self.student)
        g = EagerGraph(x)
        exporter = Int8Exporter(frozen, None, self.stream_bits, graph=g, ranges=self.ranges)
        exporter.emit()
        inputs = {}
        for name, v in exporter.layer_inputs.items():
            if isinstance(v, _Q):
                v = Dq(g.values[v.name], np.asarray(v.scale, np.float32), np.asarray(v.zero, np.uint8))
            else:
                v = g.values[v]
            inputs[name] = g.floats(v)
        return g.value(exporter.output), inputs

    def _before(self, module, args):
        if module is not self.student:
            return None
        self._logits, self._values = self.integer_graph(args[0])
        return None

    def _after(self, module, args, out):
        if module is not self.student or self._logits is None:
            return None
        logits, self._logits, self._values = self._logits, None, None
        return _substitute(out, logits, logits.dtype)  # float32 logits, also under autocast: the integer model's, exactly

    def _replace_output(self, module, args, out):
        name = self._targets.get(id(module))
        if self._values is None or name is None:
            return None
        return _substitute(out, self._values[name])

    def _replace_input(self, module, args):
        name = self._targets.get(id(module))
        if self._values is None or name is None:
            return None
        return (_substitute(args[0], self._values[name]),) + tuple(args[1:])


def check_export(path, images: torch.Tensor) -> dict:
    """A ``deploy=int8`` student's ``student_int8.onnx`` against the trained model on ``images``: ONNX
    Runtime end to end against the replay of its graph in torch, which is the trained forward's
    arithmetic (``daqkd.export.eager`` equals it bit for bit: tests/test_reference.py). An ExportError
    naming the first node whose integers differ away from a tie, unless that node is one where ONNX
    Runtime's u8×s8 kernel saturated int16 on this CPU (a CPU without VNNI, at 8-bit layers: the
    reference's ``int16_risk`` nodes where ONNX Runtime differs from the operator's definition),
    which is recorded instead; and an ExportError when more than ``MAX_TIE_SHARE`` of the integers
    are ties (no summation order explains that many). Returns the counts (integers, ties, differing)."""
    check = replay.compare(path, images)
    out = {"images": len(images), "integers": check.integers, "ties": check.ties, "differ": check.differ}
    if check.ties > MAX_TIE_SHARE * check.integers:
        raise ExportError(f"student_int8.onnx and the trained deploy=int8 model differ at {check.ties} of {check.integers} integers, all "
                          f"at rounding ties: more than ties explain (≤ {MAX_TIE_SHARE:g} of them); not written (report it with the run folder)")
    if check.differ:
        node = check.first.split()[-1]
        saturating = {n.name for n in reference.compare(path, images.numpy()).nodes if n.int16_risk and n.differ}
        if node not in saturating:
            raise ExportError(f"student_int8.onnx would not compute the trained deploy=int8 model: at {check.first}, {check.differ} of "
                              f"{check.integers} integers differ away from a rounding tie; not written (report it with the run folder)")
        out["int16_saturation_from"] = node
    return out
