"""DoReFa-Net (Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with
Low Bitwidth Gradients", arXiv 1606.06160; METHOD.md §3). No learnable parameters; STE.

    quantize_k(r) = round((2^k − 1)·r) / (2^k − 1)               (straight-through)
    weights:      w_q = 2·quantize_k(tanh(w) / (2·max|tanh w|) + 1/2) − 1     ∈ [−1, 1]
    activations:  a_q = quantize_k(clamp(x, 0, 1))                           ∈ [0, 1]
Signed activations (the image in front of an 8-bit first layer) use clamp(x, −1, 1) mapped to
[0, 1] and back.
"""
from __future__ import annotations

import torch

from daqkd.quant.base import Quantizer


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


class DoReFaQuantizer(Quantizer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_weight:
            return dorefa_weight(x, self.levels)
        if self.signed:
            return 2 * quantize_k((x.clamp(-1, 1) + 1) / 2, self.levels) - 1
        return quantize_k(x.clamp(0, 1), self.levels)
