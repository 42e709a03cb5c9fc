"""PACT: Parameterized Clipping Activation (Choi et al., arXiv 1805.06085; METHOD.md §3).

Activations are clipped to [0, α] with a learnable α, then quantized uniformly:
    y = clamp(x, 0, α),  y_q = round(y·L/α)·α/L,  L = 2^b − 1
Straight-through: ∂y_q/∂x = 1 on 0 ≤ x < α, else 0; ∂y_q/∂α = 1 on x ≥ α, else 0, so α's
gradient is the sum of the upstream gradient over x ≥ α (paper Eq. 3). α is an ordinary
parameter and trains from the first step (the reference code froze it; METHOD.md §4.5).
Signed inputs (the image in front of an 8-bit first layer) clip to [−α, α] and quantize
symmetrically; then ∂y_q/∂α = sign(x) on |x| ≥ α. Weights are quantized DoReFa-style
(conf/quantizer/pact.yaml pairs this class with DoReFaQuantizer).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from daqkd.quant.base import Quantizer


class PACTQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, levels: int, signed: bool):
        lo = -alpha if signed else torch.zeros_like(alpha)
        y = torch.minimum(torch.maximum(x, lo), alpha)
        span = alpha - lo
        y_q = torch.round((y - lo) * (levels / span)) * (span / levels) + lo
        ctx.save_for_backward(x, alpha)
        ctx.signed = signed
        return y_q

    @staticmethod
    def backward(ctx, g):
        x, alpha = ctx.saved_tensors
        above = x >= alpha
        if ctx.signed:
            below = x <= -alpha
            grad_alpha = (g * above).sum() - (g * below).sum()
            inside = ~(above | below)
        else:
            grad_alpha = (g * above).sum()
            inside = (x >= 0) & ~above
        return g * inside, grad_alpha.reshape(()), None, None


class PACTQuantizer(Quantizer):
    def __init__(self, bits: int, signed: bool, role: str = "activation", init_alpha: float | None = None):
        super().__init__(bits, signed, role)
        if role == "weight":
            raise ValueError("PACT quantizes activations; use DoReFaQuantizer for weights (see conf/quantizer/pact.yaml)")
        self.init_alpha = init_alpha
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha) if init_alpha is not None else 6.0))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """α = ``init_alpha`` when given, else mean + 3σ of |x| on the calibration batch (≤ max|x|)."""
        if self.init_alpha is None:
            a = x.detach().abs().float()
            self.alpha.fill_(float(torch.minimum(a.max(), a.mean() + 3 * a.std()).clamp_min(1e-3)))
        super().initialize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.levels if not self.signed else 2 ** self.bits - 2  # symmetric: odd number of levels
        return PACTQuantize.apply(x, self.alpha, levels, self.signed)
