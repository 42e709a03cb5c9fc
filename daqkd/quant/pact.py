"""PACT: Parameterized Clipping Activation (Choi et al., arXiv 1805.06085; docs/METHOD.md §3).

Activations are clipped to [β, α] with a learnable α, then quantized uniformly:
    y = clamp(x, β, α),  y_q = round((y − β)·L/(α − β))·(α − β)/L + β,  L = 2^b − 1
Straight-through: ∂y_q/∂x = 1 on β ≤ x < α, else 0; ∂y_q/∂α = 1 on x ≥ α, else 0, so α's gradient
is the sum of the upstream gradient over x ≥ α (paper Eq. 3). α is an ordinary parameter and trains
from the first step (the reference code froze it; docs/METHOD.md §6).
Post-ReLU inputs keep β = 0, as in the paper. An input that calibration finds negative (the image,
MobileNetV2's linear bottlenecks) gets a learnable lower clip β < 0 as well, as MQBench's PACT
does: ∂y_q/∂β = 1 on x < β (the mirror of α's rule), so no negative value is silently clipped to 0.
Weights are quantized DoReFa-style (conf/quantizer/pact.yaml pairs this class with DoReFaQuantizer).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from daqkd.quant.base import Grid, Quantizer, input_range, mse_range
from daqkd.registry import QUANTIZERS


class PACTQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, lower, levels: int):
        y = torch.minimum(torch.maximum(x, lower), alpha)
        span = alpha - lower
        y_q = torch.round((y - lower) * (levels / span)) * (span / levels) + lower
        ctx.save_for_backward(x, alpha, lower)
        return y_q

    @staticmethod
    def backward(ctx, g):
        x, alpha, lower = ctx.saved_tensors
        above, below = x >= alpha, x < lower
        grad_lower = (g * below).sum().reshape(()) if ctx.needs_input_grad[2] else None
        return g * ~(above | below), (g * above).sum().reshape(()), grad_lower, None


@QUANTIZERS.register("pact")
class PACTQuantizer(Quantizer):
    def __init__(self, bits: int, signed: bool, role: str = "activation", init_alpha: float | None = None):
        super().__init__(bits, signed, role)
        if role == "weight":
            raise ValueError("PACT quantizes activations; use DoReFaQuantizer for weights (see conf/quantizer/pact.yaml)")
        self.init_alpha = init_alpha
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha) if init_alpha is not None else 6.0))
        # The lower clip β: learned for signed inputs, held at 0 for post-ReLU ones.
        self.lower = nn.Parameter(torch.tensor(-float(init_alpha) if signed and init_alpha is not None else (-6.0 if signed else 0.0)))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """α (and β for a signed input) of least quantization MSE on the batch (``mse_range``), or
        α = ``init_alpha`` (β = −``init_alpha``) when given; β = 0 for an unsigned input."""
        if self.init_alpha is not None:
            lo, hi = (-float(self.init_alpha) if self.signed else 0.0), float(self.init_alpha)
        else:
            lo, hi = mse_range(x, self.levels, *input_range(x, self.signed))
        self.alpha.fill_(hi)
        self.lower.fill_(min(lo, -1e-3) if self.signed else 0.0)
        super().initialize(x)

    def grid(self) -> Grid:
        lo = float(self.lower.detach()) if self.signed else 0.0
        step = (float(self.alpha.detach()) - lo) / self.levels
        return Grid(step, -lo / step, step, -lo / step, 0, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lower = self.lower if self.signed else self.lower.detach()
        return PACTQuantize.apply(x, self.alpha, lower, self.levels)
