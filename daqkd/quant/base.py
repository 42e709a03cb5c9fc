"""The quantizer interface, the quantized layers and model conversion.

A quantizer is an ``nn.Module`` that maps a float tensor to its fake-quantized value and owns its
learnable parameters. A quantized layer holds one quantizer for its weight and one for its input
activation (either may be absent, meaning full precision) and, optionally, a learnable output scale.
Adding a quantizer means writing one ``Quantizer`` subclass and one YAML file in conf/quantizer/.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.torchutil import eval_mode

ALLOWED_BITS = (2, 3, 4, 8, 32)
FULL_PRECISION = 32


ROLES = ("weight", "activation")


@dataclass(frozen=True)
class Grid:
    """A quantizer's trained grid as integers (for export, daqkd/quant/convert.py).

    In eval mode the quantizer computes ``out_scale·(k − out_zero)`` with the integer
    ``k = clamp(round(x/in_scale + in_zero), qmin, qmax)``. The zero points are floats: a learned
    lower clip does not fall on an integer, and the mid-rise weight grids of EWGS, PACT and DoReFa
    ((2k − L)/L) have zero point L/2. For weights only the ``out_*`` half is used (k is read back
    from the quantized weight, whatever map produced it, e.g. DoReFa's tanh).
    """

    in_scale: float
    in_zero: float
    out_scale: float
    out_zero: float
    qmin: int
    qmax: int


class Quantizer(nn.Module):
    """Base class, built as ``Quantizer(bits=, signed=, role=)``.

    ``bits``: bit width; ``role``: "weight" or "activation"; ``signed``: whether the input takes
    negative values. Weights are signed. For an activation, ``signed`` is only the first guess:
    ``calibrate`` decides it from what the calibration batch holds (docs/METHOD.md §3, signed
    activations): an input with any negative value is signed, so a quantizer never silently clips
    negatives to 0 (which would insert a ReLU, e.g. after MobileNetV2's linear bottlenecks).
    Subclasses implement ``forward`` and, when they learn from data, ``initialize``.
    """

    def __init__(self, bits: int, signed: bool, role: str = "activation"):
        super().__init__()
        if bits not in ALLOWED_BITS or bits == FULL_PRECISION:
            raise ValueError(f"a quantizer needs bits in {ALLOWED_BITS[:-1]}, got {bits}")
        if role not in ROLES:
            raise ValueError(f"quantizer role must be one of {ROLES}, got {role!r}")
        self.bits, self.role = int(bits), role
        # Set once initialised from data; saved in checkpoints so a resumed run is not re-calibrated.
        self.register_buffer("initialized", torch.tensor(False))
        # The sign decided at calibration, kept as a buffer so checkpoints carry it; the plain
        # attribute ``signed`` mirrors it for the hot path (no device sync per forward).
        self.register_buffer("sign", torch.tensor(bool(signed) or role == "weight"))
        self.signed = bool(self.sign)

    def set_signed(self, signed: bool) -> None:
        self.sign.fill_(bool(signed))
        self.signed = bool(signed)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.signed = bool(self.sign)

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Decide an activation's sign from ``x``, then initialise from it (``initialize``)."""
        if not self.is_weight:
            self.set_signed(bool(x.detach().min() < 0))
        self.initialize(x)
        self.initialized.fill_(True)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the learnable parameters from data (a weight, or one calibration batch of inputs)."""
        self.initialized.fill_(True)

    def learned(self) -> dict[str, float]:
        """Scalar learned state for summaries: parameters and buffers other than the init flag."""
        out = {}
        for name, t in list(self.named_parameters(recurse=False)) + list(self.named_buffers(recurse=False)):
            if name != "initialized" and t.numel() == 1:
                out[name] = float(t.detach())
        return out

    @property
    def is_weight(self) -> bool:
        return self.role == "weight"

    def grid(self) -> Grid:
        """The trained grid as integers (``Grid``); every quantizer that can be exported implements it."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its grid as integers, so it cannot be exported")

    def mid_rise_weight_grid(self) -> Grid:
        """The weight grid 2·k/L − 1, k ∈ {0..L} (EWGS, DoReFa): scale 2/L, zero point L/2."""
        return Grid(1.0, 0.0, 2.0 / self.levels, self.levels / 2, 0, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, role={self.role}"


QuantizerFactory = Callable[..., Quantizer]  # (bits=, signed=, role=) -> Quantizer


@torch.no_grad()
def mse_range(x: torch.Tensor, levels: int, lower: float, upper: float, steps: int = 80,
              max_elements: int = 1 << 16) -> tuple[float, float]:
    """The clipping range [f·lower, f·upper], f ∈ {1/steps, ..., 1}, whose uniform quantization to
    ``levels`` + 1 values has the least mean squared error on ``x`` (a fixed subsample of it when large).

    How every learnable range starts (calibration): wide at 8 bits, where clipping costs more than
    rounding, and tight at 2 bits, where it is the other way round; a fixed ±3σ rule is neither.
    """
    v = x.detach().flatten().float()
    if v.numel() > max_elements:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:max_elements].to(v.device)]
    f = torch.arange(1, steps + 1, dtype=torch.float32, device=v.device) / steps
    best, best_err = (lower, upper), float("inf")
    for chunk in f.split(16):
        lo, hi = (lower * chunk)[:, None], (upper * chunk)[:, None]
        span = (hi - lo).clamp_min(1e-12)
        # round((clamp(v, lo, hi) − lo) / span · L) / L · span + lo − v, squared: in place, one buffer
        # (the same float operations in the same order as out of place, 2× faster: calibration's cost)
        q = torch.maximum(v[None], lo)
        torch.minimum(q, hi, out=q)
        q.sub_(lo).div_(span).mul_(levels).round_().div_(levels).mul_(span).add_(lo).sub_(v[None]).pow_(2)
        err = q.mean(1)
        k = int(err.argmin())
        if float(err[k]) < best_err:
            best_err, best = float(err[k]), (float(lo[k]), float(hi[k]))
    if not best[1] > best[0]:  # a constant input: keep a non-degenerate range
        best = (best[0], best[0] + 1e-3)
    return best


def input_range(x: torch.Tensor, signed: bool) -> tuple[float, float]:
    """The observed range an activation's clipping range shrinks from: [min, max], or [0, max] unsigned."""
    x = x.detach()
    return (float(x.min()) if signed else 0.0), max(float(x.max()), 1e-6)


class QuantLayerMixin:
    """Shared state of QuantConv2d and QuantLinear."""

    weight_quantizer: Quantizer | None
    act_quantizer: Quantizer | None
    output_scale: nn.Parameter | None

    def _setup_quant(self, wq: Quantizer | None, aq: Quantizer | None, output_scale: bool) -> None:
        self.weight_quantizer, self.act_quantizer = wq, aq
        self.output_scale = nn.Parameter(torch.ones(())) if output_scale else None
        self.calibrating = False

    def _linear_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # conv or matmul, no bias
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            return self._calibrate(x)
        if self.act_quantizer is not None and x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # mixed precision: quantizer arithmetic in fp32 (bf16 cannot tell 255 levels apart)
        xq = self.act_quantizer(x) if self.act_quantizer is not None else x
        wq = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        if self.output_scale is not None:
            # conv(x, w)·s = conv(x, s·w) for a scalar s: scale the small tensor, not the output.
            wq = wq * self.output_scale
        out = self._linear_op(xq, wq)
        return out if self.bias is None else out + self.bias.view(1, -1, *([1] * (out.ndim - 2)))

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor) -> torch.Tensor:
        """Initialise both quantizers and the output scale (mean|out_fp| / mean|out_q|) on ``x``,
        and pass the quantized output on so later layers calibrate on what they will really see."""
        if self.act_quantizer is not None:
            self.act_quantizer.calibrate(x)
        if self.weight_quantizer is not None:
            self.weight_quantizer.calibrate(self.weight)
        self.calibrating = False
        out_fp = self._linear_op(x, self.weight)
        if self.output_scale is not None:
            self.output_scale.fill_(1.0)
            out_q = self._linear_op(
                self.act_quantizer(x) if self.act_quantizer is not None else x,
                self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight,
            )
            self.output_scale.fill_(float(out_fp.abs().mean() / out_q.abs().mean().clamp_min(1e-12)))
        out = self.forward(x)
        self.calibrating = False
        return out


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    def _linear_op(self, x, w):
        if self.padding_mode != "zeros":
            return self._conv_forward(x, w, None)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayerMixin, nn.Linear):
    def _linear_op(self, x, w):
        return F.linear(x, w)


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLayerMixin]]:
    for name, m in model.named_modules():
        if isinstance(m, QuantLayerMixin):
            yield name, m


def _make(factory: QuantizerFactory | None, bits: int, signed: bool, role: str) -> Quantizer | None:
    if factory is None or bits == FULL_PRECISION:
        return None
    return factory(bits=bits, signed=signed, role=role)


FIRST_LAST_POLICIES = ("fp", "int8", "same")


def check_bits(bits: int, what: str) -> int:
    """The one check of a bit width: a ValueError naming ``what``, the value and the allowed ones."""
    if isinstance(bits, bool) or bits not in ALLOWED_BITS:
        raise ValueError(
            f"{what}={bits} is not supported; allowed bit widths: {', '.join(map(str, ALLOWED_BITS))} "
            "(32 = full precision), e.g. bits=4 or bits.w=2 bits.a=4"
        )
    return int(bits)


def check_first_last(policy: str) -> str:
    """The one check of the first/last-layer policy."""
    if policy not in FIRST_LAST_POLICIES:
        raise ValueError(f"quantizer.first_last={policy!r} is not a policy; expected one of {', '.join(FIRST_LAST_POLICIES)}, "
                         f"e.g. quantizer.first_last={FIRST_LAST_POLICIES[0]}")
    return policy


def quantize_model(
    model: nn.Module,
    weight: QuantizerFactory | None,
    activation: QuantizerFactory | None,
    bits_w: int,
    bits_a: int,
    first_last: str = "fp",
    output_scale: bool = False,
) -> nn.Module:
    """Replace every Conv2d/Linear of ``model`` in place by its quantized twin, keeping its weights.

    ``first_last``: "fp" keeps the first conv and the last linear in full precision (reference CIFAR
    code); "int8" quantizes them at 8 bits (reference Tiny-ImageNet code); "same" treats them like
    every other layer. The first layer's input (the normalised image) is signed.
    """
    check_bits(bits_w, "bits.w")
    check_bits(bits_a, "bits.a")
    check_first_last(first_last)
    targets = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if not targets:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    edge = {targets[0][0], targets[-1][0]}
    for i, (name, m) in enumerate(targets):
        bw, ba = bits_w, bits_a
        if name in edge and first_last == "fp":
            continue
        if name in edge and first_last == "int8":
            bw, ba = (FULL_PRECISION if b == FULL_PRECISION else 8 for b in (bits_w, bits_a))
        wq = _make(weight, bw, signed=True, role="weight")
        aq = _make(activation, ba, signed=(i == 0), role="activation")
        if wq is None and aq is None:
            continue
        _swap(model, name, m, wq, aq, output_scale)
    return model


def _swap(model: nn.Module, name: str, m: nn.Module, wq, aq, output_scale: bool) -> None:
    if isinstance(m, nn.Conv2d):
        q = QuantConv2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
            m.bias is not None, m.padding_mode, device=m.weight.device, dtype=m.weight.dtype,
        )
    else:
        q = QuantLinear(m.in_features, m.out_features, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    q.load_state_dict(m.state_dict())
    q._setup_quant(wq, aq, output_scale)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, q)


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Initialise every quantizer and output scale from one batch (docs/METHOD.md §3, calibration)."""
    layers = [m for _, m in quant_layers(model)]
    try:
        with eval_mode(model):
            for m in layers:
                m.calibrating = True
            model(images)
    finally:
        for m in layers:
            m.calibrating = False


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Learnable quantizer state (intervals, α, steps, output scales), optimised at its own lr."""
    params = []
    for _, m in quant_layers(model):
        for q in (m.weight_quantizer, m.act_quantizer):
            if q is not None:
                params += list(q.parameters())
        if m.output_scale is not None:
            params.append(m.output_scale)
    return params


def summary(model: nn.Module) -> str:
    """Per layer: type, quantizer, W/A bits and learned parameters (FP layers are listed too)."""
    rows = [("layer", "type", "quantizer", "W", "A", "learned")]
    for name, m in model.named_modules():
        if isinstance(m, QuantLayerMixin):
            wq, aq = m.weight_quantizer, m.act_quantizer
            qname = type(wq or aq).__name__
            learned = []
            for tag, q in (("w", wq), ("a", aq)):
                if q is not None:
                    learned += [f"{tag}.{k}={v:.4g}" for k, v in q.learned().items()]
            if m.output_scale is not None:
                learned.append(f"out_scale={float(m.output_scale.detach()):.4g}")
            rows.append((name, type(m).__name__, qname, str(wq.bits if wq else 32), str(aq.bits if aq else 32), " ".join(learned)))
        elif type(m) in (nn.Conv2d, nn.Linear):
            rows.append((name, type(m).__name__, "fp", "32", "32", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)
