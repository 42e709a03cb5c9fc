"""EWGS: Element-Wise Gradient Scaling (Lee, Kim & Ham, "Network Quantization with Element-wise
Gradient Scaling", CVPR 2021; METHOD.md §3).

Forward: x_n = clamp((x − l)/(u − l), 0, 1), x_q = round(x_n·(2^b − 1))/(2^b − 1); weights map to
2·x_q − 1, activations stay x_q. Backward through the rounding: g_n = g·(1 + δ·sign(g)·(x_n − x_q)).
δ is re-estimated each epoch from the Hessian trace (Hutchinson), or fixed. δ = 0 would be plain STE.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from daqkd.quant.base import Quantizer

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
    delta = torch.as_tensor(delta, dtype=x_n.dtype, device=x_n.device)
    return EWGSRound.apply(x_n, levels, delta)


class EWGSQuantizer(Quantizer):
    """Learnable interval [l, u]; δ per quantizer, kept as a buffer so checkpoints carry it.

    Unsigned activations keep x_q ∈ [0, 1] (the layer's output scale restores the magnitude);
    signed inputs that are not weights (the image in front of an 8-bit first layer) are mapped back
    to x_q·(u − l) + l, since an offset cannot be absorbed by a scale.
    """

    def __init__(self, bits: int, signed: bool, delta_mode: str = "hessian", delta: float = 1e-3, is_weight: bool | None = None):
        super().__init__(bits, signed)
        if delta_mode not in DELTA_MODES:
            raise ValueError(f"quantizer delta_mode={delta_mode!r}; expected one of {', '.join(DELTA_MODES)}")
        self.delta_mode = delta_mode
        self.is_weight = signed if is_weight is None else is_weight
        self.lower = nn.Parameter(torch.tensor(-1.0 if signed else 0.0))
        self.upper = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("delta", torch.tensor(float(delta)))
        self.capture = False  # set by the Hessian estimator to keep x_q for autograd
        self.captured: torch.Tensor | None = None

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Weights: [−3σ, 3σ]. Activations: [mean − 3σ, mean + 3σ] cut to the batch's [min, max]."""
        x = x.detach().float()
        std = x.std()
        if self.is_weight:
            lo, hi = -3 * std, 3 * std
        else:
            lo = torch.maximum(x.min(), x.mean() - 3 * std)
            hi = torch.minimum(x.max(), x.mean() + 3 * std)
        if not hi > lo:  # constant input: keep a non-degenerate interval
            hi = lo + 1e-3
        self.lower.fill_(float(lo))
        self.upper.fill_(float(hi))
        super().initialize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.lower) / (self.upper - self.lower)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = ewgs_round(self.normalize(x), self.levels, self.delta)
        if self.capture:
            self.captured = x_q
        if self.is_weight:
            return 2 * x_q - 1
        if self.signed:
            return x_q * (self.upper - self.lower) + self.lower
        return x_q

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta_mode={self.delta_mode}"


def ewgs_quantizers(model: nn.Module, mode: str = "hessian") -> list[EWGSQuantizer]:
    return [m for m in model.modules() if isinstance(m, EWGSQuantizer) and m.delta_mode == mode]


def estimate_ewgs_deltas(
    model: nn.Module,
    loss_fn: Callable[[object], torch.Tensor],
    batches: Iterable,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Re-estimate δ = (Tr(H)/N) / (3·σ(g)) for every Hessian-mode EWGS quantizer (paper §3.3).

    H is the Hessian of the loss w.r.t. the quantizer's output x_q and g its gradient. Tr(H) comes
    from Hutchinson's estimator E[vᵀHv] with one Rademacher v per quantizer and batch; estimates are
    averaged over ``batches`` and the trace is clipped at 0. ``loss_fn(batch)`` must run ``model``.
    Returns {quantizer name: δ}. The model runs in eval mode, so BN statistics are left untouched.
    """
    quantizers = ewgs_quantizers(model)
    if not quantizers:
        return {}
    names = {q: n for n, q in model.named_modules() if q in quantizers}
    trace = {q: 0.0 for q in quantizers}
    gstd = {q: 0.0 for q in quantizers}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for q in quantizers:
            q.capture = True
        for batch in batches:
            with torch.enable_grad():
                loss = loss_fn(batch)
                outs = [q.captured for q in quantizers]
                grads = torch.autograd.grad(loss, outs, create_graph=True)
                vs = [torch.randint(0, 2, g.shape, generator=generator, dtype=torch.int8).to(g) * 2 - 1 for g in grads]
                hvs = torch.autograd.grad(grads, outs, grad_outputs=vs, allow_unused=True)
            for q, g, v, hv in zip(quantizers, grads, vs, hvs):
                if hv is not None:
                    trace[q] += float((v * hv).sum()) / g.numel()
                gstd[q] += float(g.detach().std())
            count += 1
    finally:
        for q in quantizers:
            q.capture = False
            q.captured = None
        model.train(was_training)
    if count == 0:
        raise ValueError("estimate_ewgs_deltas got no batches")
    result = {}
    for q in quantizers:
        tr, sd = max(trace[q] / count, 0.0), gstd[q] / count
        delta = tr / (3 * sd) if sd > 0 else 0.0
        q.delta.fill_(delta)
        result[names[q]] = delta
    return result
