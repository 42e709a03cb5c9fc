"""VID: variational information distillation (Ahn et al., CVPR 2019).

For each feature map, a regressor μ(F_s) predicts the teacher's F_t under a Gaussian with a
learnable per-channel variance σ² = softplus(ρ) + ε; the loss is the negative log-likelihood
    L = Σ_layers mean( ½·log σ² + (F_t − μ(F_s))² / (2σ²) ),
which lower-bounds the mutual information. Paper weight β = 1; μ and ρ train with the student.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, spatial_pairs
from daqkd.registry import KD_METHODS


class VIDHead(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        c_mid = c_mid or max(c_in, c_out)
        self.mean = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1), nn.ReLU(), nn.Conv2d(c_mid, c_mid, 1), nn.ReLU(), nn.Conv2d(c_mid, c_out, 1)
        )
        # softplus(ρ) = init_var − ε at the start (the paper's initial variance).
        self.rho = nn.Parameter(torch.full((c_out,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        var = (F.softplus(self.rho) + self.eps).view(1, -1, 1, 1)
        return (0.5 * (var.log() + (t - self.mean(s)).pow(2) / var)).mean()


@KD_METHODS.register("vid")
class VariationalInformation(KDMethod):
    def __init__(self, student_shapes, teacher_shapes, init_var: float = 5.0):
        super().__init__()
        self.heads = nn.ModuleList(
            VIDHead(s[0], t[0], init_var=init_var) for s, t in zip(student_shapes, teacher_shapes) if len(s) == 3
        )

    def forward(self, batch: KDBatch) -> torch.Tensor:
        return sum(h(s, t) for h, (s, t) in zip(self.heads, spatial_pairs(batch)))
