"""EWGS: Element-Wise Gradient Scaling (Lee, Kim & Ham, "Network Quantization with Element-wise
Gradient Scaling", CVPR 2021; docs/METHOD.md §3).

Forward: x_n = clamp((x − l)/(u − l), 0, 1), x_q = round(x_n·(2^b − 1))/(2^b − 1); weights map to
2·x_q − 1, activations stay x_q. Backward through the rounding: g_n = g·(1 + δ·sign(g)·(x_n − x_q)).
δ is re-estimated each epoch from the Hessian trace (Hutchinson), or fixed. δ = 0 would be plain STE.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from daqkd.quant.base import Grid, Quantizer, input_range, mse_range
from daqkd.registry import QUANTIZERS
from daqkd.torchutil import eval_mode

log = logging.getLogger(__name__)
DELTA_MODES = ("hessian", "fixed")


class EWGSRound(torch.autograd.Function):
    """x_q = round(x_n·L)/L with the EWGS backward g·(1 + δ·sign(g)·(x_n − x_q)) (paper Eq. 5)."""

    @staticmethod
    def forward(ctx, x_n: torch.Tensor, levels: int, delta: torch.Tensor) -> torch.Tensor:
        x_q = torch.round(x_n * levels) / levels
        ctx.save_for_backward(x_n - x_q, delta)
        return x_q

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        diff, delta = ctx.saved_tensors
        return g * (1 + delta * torch.sign(g) * diff), None, None


def ewgs_round(x_n: torch.Tensor, levels: int, delta: torch.Tensor | float) -> torch.Tensor:
    """The EWGS discretiser alone, on already normalised x_n ∈ [0, 1]."""
    delta = torch.as_tensor(delta, dtype=x_n.dtype, device=x_n.device)
    return EWGSRound.apply(x_n, levels, delta)


class EWGSQuantize(torch.autograd.Function):
    """Fused normalise → round → map, the QAT hot path: y = gain·x_q + offset with
    x_q = round(clamp((x − l)/r, 0, 1)·L)/L and r = u − l; (gain, offset) is (2, −1) for weights and
    (1, 0) for unsigned activations.

    Backward, with g_q = gain·g and x_n the unclipped normalised input:
        g_n = g_q + δ·|g_q|·(x_n − x_q)            (= g_q·(1 + δ·sign(g_q)·(x_n − x_q)), Eq. 5)
        ∂x  = g_n/r on l < x < u, else 0
        ∂l  = Σ g_n·(x_n − 1)/r,   ∂u = −Σ g_n·x_n/r   (over l < x < u)
    Points exactly on l or u get no gradient, as autograd through clamp gives (this keeps the
    exact zeros of a ReLU from pulling on l).
    This is what autograd through clamp((x − l)/r) and EWGSRound gives, in about half the passes
    over the tensor. The backward uses differentiable ops so Hessian-vector products pass through it.
    """

    @staticmethod
    def forward(ctx, x, lower, upper, delta, levels: int, gain: float):
        r = upper - lower
        x_q = (x - lower).div_(r).clamp_(0, 1).mul_(levels).round_().div_(levels)
        ctx.save_for_backward(x, x_q, lower, upper, delta)
        ctx.gain = gain
        return x_q if gain == 1 else x_q * gain - gain / 2

    @staticmethod
    def backward(ctx, g):
        x, x_q, lower, upper, delta = ctx.saved_tensors
        r = upper - lower
        g_q = g * ctx.gain if ctx.gain != 1 else g
        if torch.is_grad_enabled():  # create_graph=True (Hessian estimate): differentiable ops only
            x_n = (x - lower) / r
            inside = (x_n > 0) & (x_n < 1)
            g_n = torch.where(inside, g_q + delta * g_q.abs() * (x_n - x_q), 0)
            s_xn = (g_n * x_n).sum()
        else:  # training: the same numbers, in place, with few temporaries
            x_n = (x - lower).div_(r)
            inside = (x_n > 0).logical_and_(x_n < 1)
            g_n = (x_n - x_q).mul_(g_q.abs()).mul_(delta).add_(g_q).mul_(inside)
            s_xn = torch.dot(g_n.flatten(), x_n.flatten())
        s_all = g_n.sum()
        grad_x = g_n / r if ctx.needs_input_grad[0] else None
        return grad_x, (s_xn - s_all) / r, -s_xn / r, None, None, None


@QUANTIZERS.register("ewgs")
class EWGSQuantizer(Quantizer):
    """Learnable interval [l, u]; δ per quantizer, kept as a buffer so checkpoints carry it.

    Unsigned activations keep x_q ∈ [0, 1] (the layer's output scale restores the magnitude);
    signed inputs that are not weights (the image in front of an 8-bit first layer) are mapped back
    to x_q·(u − l) + l, since an offset cannot be absorbed by a scale.
    """

    def __init__(self, bits: int, signed: bool, role: str = "activation", delta_mode: str = "hessian", delta: float = 1e-3):
        super().__init__(bits, signed, role)
        if delta_mode not in DELTA_MODES:
            raise ValueError(f"quantizer delta_mode={delta_mode!r}; expected one of {', '.join(DELTA_MODES)}")
        self.delta_mode = delta_mode
        self.lower = nn.Parameter(torch.tensor(-1.0 if signed else 0.0))
        self.upper = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("delta", torch.tensor(float(delta)))
        self.capture = False  # set by the Hessian estimator to keep x_q for autograd
        self.captured: torch.Tensor | None = None

    def __getstate__(self):  # a copy (deploy=int8's freeze during a δ estimate) or a pickle leaves the captured output behind
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "captured": None}

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """[l, u] of least quantization MSE (``mse_range``): symmetric about 0 for weights, shrunk
        from the batch's [min, max] ([0, max] unsigned) for activations. (The paper's rule, ±3σ for
        weights, clips too much at 8 bits; README "Where daqkd departs".)"""
        x = x.detach().float()
        if self.is_weight:
            m = max(float(x.abs().max()), 1e-6)
            lo, hi = mse_range(x, self.levels, -m, m)
        else:
            lo, hi = mse_range(x, self.levels, *input_range(x, self.signed))
        self.lower.fill_(lo)
        self.upper.fill_(hi)
        super().initialize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lower) / (self.upper - self.lower)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed and not self.is_weight:  # rare (8-bit first layer): plain autograd
            y = ewgs_round(self.normalize(x), self.levels, self.delta) * (self.upper - self.lower) + self.lower
        else:
            gain = 2.0 if self.is_weight else 1.0
            y = EWGSQuantize.apply(x, self.lower, self.upper, self.delta, self.levels, gain)
        if self.capture:
            self.captured = y
        return y

    def grid(self) -> Grid:
        if self.is_weight:
            return self.mid_rise_weight_grid()
        lo, r = float(self.lower.detach()), float((self.upper - self.lower).detach())
        step = r / self.levels
        # Unsigned activations stay in [0, 1] (k/L); signed ones map back to k·r/L + l.
        out_scale, out_zero = (step, -lo / step) if self.signed else (1.0 / self.levels, 0.0)
        return Grid(step, -lo / step, out_scale, out_zero, 0, self.levels)

    def output_gain(self) -> torch.Tensor:
        """dy/dx_q: converts gradients and Hessians taken w.r.t. the output y into x_q units."""
        if self.is_weight:
            return torch.tensor(2.0)
        if self.signed:
            return (self.upper - self.lower).detach()
        return torch.tensor(1.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta_mode={self.delta_mode}"


def ewgs_quantizers(model: nn.Module, mode: str = "hessian") -> list[EWGSQuantizer]:
    return [m for m in model.modules() if isinstance(m, EWGSQuantizer) and m.delta_mode == mode]


def ewgs_delta(trace_y: float, grad_std_y: float, gain: float, levels: int, previous: float) -> float:
    """δ = max(Tr H/N, 0) / (3·σ(g)) in x_q units, from estimates taken w.r.t. y = gain·x_q + b.

    A non-finite estimate keeps ``previous`` (never NaN, never a silent 0). δ is capped at L = 2^b − 1:
    |x_n − x_q| ≤ 1/(2L), so the factor 1 + δ·sign(g)·(x_n − x_q) stays in [0.5, 1.5] and the gradient
    keeps its sign, as EWGS assumes (RKD on nearly identical embeddings gave estimates of 4.8e7).
    """
    tr, sd = trace_y * gain * gain, grad_std_y * gain
    if not (math.isfinite(tr) and math.isfinite(sd)):
        log.warning("EWGS δ estimate is not finite (trace %s, σ %s); keeping δ = %.4g", tr, sd, previous)
        return previous
    delta = max(tr, 0.0) / (3 * sd) if sd > 0 else 0.0
    if delta > levels:
        log.warning("EWGS δ estimate %.3g capped at %d", delta, levels)
        return float(levels)
    return delta


def estimate_ewgs_deltas(
    model: nn.Module,
    loss_fn: Callable[[object], torch.Tensor],
    batches: Iterable,
    generator: torch.Generator | None = None,
    probes: int = 4,
) -> dict[str, float]:
    """Re-estimate δ = (Tr(H)/N) / (3·σ(g)) for every Hessian-mode EWGS quantizer (paper §3.3).

    H is the Hessian of the loss w.r.t. the quantizer's discrete value x_q and g its gradient; both
    are taken w.r.t. the output y = c·x_q + b and converted (Tr H_xq = c²·Tr H_y, σ(g_xq) = c·σ(g_y)). Tr(H) comes
    from Hutchinson's estimator E[vᵀHv] with ``probes`` Rademacher vectors per batch (one probe has
    a standard deviation about twice the trace it estimates); estimates are averaged over
    ``batches`` and probes, and the trace is clipped at 0. ``loss_fn(batch)`` must run ``model``.
    Returns {quantizer name: δ}. The model runs in eval mode, so BN statistics are left untouched.
    """
    quantizers = ewgs_quantizers(model)
    if not quantizers:
        return {}
    names = {q: n for n, q in model.named_modules() if q in quantizers}
    trace = {q: 0.0 for q in quantizers}
    gstd = {q: 0.0 for q in quantizers}
    count = 0
    try:
        for q in quantizers:
            q.capture = True
        # Compiled (speed.compile): the captured outputs live inside the compiled graph, off the
        # loss's autograd path; the estimate runs the same modules eagerly.
        with eval_mode(model), torch.compiler.set_stance("force_eager"):
            for batch in batches:
                with torch.enable_grad():
                    loss = loss_fn(batch)
                    outs = [q.captured for q in quantizers]
                    grads = torch.autograd.grad(loss, outs, create_graph=True)
                    for k in range(probes):
                        vs = [torch.randint(0, 2, g.shape, generator=generator, dtype=torch.int8).to(g) * 2 - 1 for g in grads]
                        hvs = torch.autograd.grad(grads, outs, grad_outputs=vs, allow_unused=True, retain_graph=k < probes - 1)
                        for q, v, hv in zip(quantizers, vs, hvs):
                            if hv is not None:
                                trace[q] += float((v * hv).sum()) / v.numel() / probes
                for q, g in zip(quantizers, grads):
                    gstd[q] += float(g.detach().std())
                count += 1
    finally:
        for q in quantizers:
            q.capture = False
            q.captured = None
    if count == 0:
        raise ValueError("estimate_ewgs_deltas got no batches")
    result = {}
    for q in quantizers:
        delta = ewgs_delta(trace[q] / count, gstd[q] / count, float(q.output_gain()), q.levels, float(q.delta))
        q.delta.fill_(delta)
        result[names[q]] = delta
    return result
