"""DoReFa-Net (Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with
Low Bitwidth Gradients", arXiv 1606.06160; docs/METHOD.md §3). No learnable parameters; STE.

    quantize_k(r) = round((2^k − 1)·r) / (2^k − 1)               (straight-through)
    weights:      w_q = 2·quantize_k(tanh(w) / (2·max|tanh w|) + 1/2) − 1     ∈ [−1, 1]
    activations:  a_q = r·quantize_k(clamp(x/r, 0, 1))                       ∈ [0, r]
DoReFa-Net bounds its activations to [0, 1] by construction. A student converted from an FP teacher
has ReLU activations far above 1, so the range r is a fixed (not learned) scale set at calibration,
r = the clip of least quantization MSE; r = 1 is the paper's clamp (README "Where daqkd departs").
Signed activations (calibration saw negatives) use clamp(x/r, −1, 1) mapped to [0, 1] and back.
"""
from __future__ import annotations

import torch

from daqkd.quant.base import Grid, Quantizer, mse_range
from daqkd.registry import QUANTIZERS


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantize_k(r: torch.Tensor, levels: int) -> torch.Tensor:
    """Uniform quantization of r ∈ [0, 1] to ``levels`` + 1 values, straight-through."""
    return ste_round(r * levels) / levels


def dorefa_weight(w: torch.Tensor, levels: int) -> torch.Tensor:
    t = torch.tanh(w)
    r = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    return 2 * quantize_k(r, levels) - 1


@QUANTIZERS.register("dorefa")
class DoReFaQuantizer(Quantizer):
    def __init__(self, bits: int, signed: bool, role: str = "activation"):
        super().__init__(bits, signed, role)
        self.register_buffer("range", torch.tensor(1.0))  # activations only; fixed, not learned

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        if not self.is_weight:
            m = max(float(x.detach().abs().max()), 1e-6)
            _, hi = mse_range(x, self.levels, -m if self.signed else 0.0, m)
            self.range.fill_(hi)
        super().initialize(x)

    def grid(self) -> Grid:
        if self.is_weight:
            return self.mid_rise_weight_grid()
        r, L = float(self.range), self.levels
        if self.signed:  # (2·round((x/r + 1)/2·L)/L − 1)·r
            return Grid(2 * r / L, L / 2, 2 * r / L, L / 2, 0, L)
        return Grid(r / L, 0.0, r / L, 0.0, 0, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_weight:
            return dorefa_weight(x, self.levels)
        r = self.range
        if self.signed:
            return (2 * quantize_k((x / r).clamp(-1, 1).add(1).div(2), self.levels) - 1) * r
        return quantize_k((x / r).clamp(0, 1), self.levels) * r
