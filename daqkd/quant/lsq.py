"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020; docs/METHOD.md §3).

    v̂ = round(clamp(v/s, −Q_n, Q_p))·s
Signed tensors (weights): Q_n = 2^(b−1), Q_p = 2^(b−1) − 1; unsigned (post-ReLU): Q_n = 0, Q_p = 2^b − 1.
Gradients (paper Eq. 3, with the gradient scale g = 1/√(N·Q_p)):
    ∂v̂/∂v = 1 for −Q_n < v/s < Q_p, else 0
    ∂v̂/∂s = (round(v/s) − v/s)·g inside, −Q_n·g below, Q_p·g above
N is the number of weights for weights, the number of features per example for activations.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from daqkd.quant.base import Grid, Quantizer, mse_range
from daqkd.registry import QUANTIZERS


class LSQQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, q_n: int, q_p: int, grad_scale: float):
        v = x / step
        v_bar = v.clamp(-q_n, q_p).round()
        ctx.save_for_backward(v, v_bar)
        ctx.q_n, ctx.q_p, ctx.grad_scale = q_n, q_p, grad_scale
        return v_bar * step

    @staticmethod
    def backward(ctx, g):
        v, v_bar = ctx.saved_tensors
        below, above = v <= -ctx.q_n, v >= ctx.q_p
        inside = ~(below | above)
        grad_x = g * inside
        # Inside: round(v) − v; below: −Q_n; above: Q_p (v_bar already holds the clamped values).
        ds = torch.where(inside, v_bar - v, v_bar)
        grad_s = (g * ds).sum() * ctx.grad_scale
        return grad_x, grad_s.reshape(()), None, None, None


@QUANTIZERS.register("lsq")
class LSQQuantizer(Quantizer):
    def __init__(self, bits: int, signed: bool, role: str = "activation"):
        super().__init__(bits, signed, role)
        self.step = nn.Parameter(torch.tensor(1.0))

    @property
    def q_n(self) -> int:
        return 2 ** (self.bits - 1) if self.signed else 0

    @property
    def q_p(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """The step of least quantization MSE on ``x`` (``mse_range`` over s, the grid [−Q_n·s, Q_p·s]),
        rather than the paper's 2·mean|x|/√Q_p, which leaves 8-bit grids too coarse (README)."""
        x = x.detach().float()
        s_max = max(float(x.max()) / self.q_p, float(-x.min()) / self.q_n if self.q_n else 0.0, 1e-8)
        lo, hi = mse_range(x, self.q_n + self.q_p, -self.q_n * s_max, self.q_p * s_max)
        self.step.fill_((hi - lo) / (self.q_n + self.q_p))
        super().initialize(x)

    def grid(self) -> Grid:
        s = float(self.step.detach())
        return Grid(s, 0.0, s, 0.0, -self.q_n, self.q_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() if self.is_weight else x[0].numel()
        return LSQQuantize.apply(x, self.step, self.q_n, self.q_p, 1.0 / math.sqrt(n * self.q_p))
