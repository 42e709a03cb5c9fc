"""FitNet hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

A learnable 1×1-conv regressor maps each student feature map to the teacher's channels;
L = Σ_layers mean((r(F_s) − F_t)²). Paper weight β = 100. The regressors are trained with the student.
"""
import torch
import torch.nn as nn

from daqkd.kd.taps import KDBatch, KDMethod, spatial_pairs
from daqkd.registry import KD_METHODS


@KD_METHODS.register("fitnet")
class FitNet(KDMethod):
    def __init__(self, student_shapes, teacher_shapes):
        super().__init__()
        self.regressors = nn.ModuleList()
        for s, t in zip(student_shapes, teacher_shapes):
            if len(s) != 3:  # only [C, H, W] maps get a regressor
                continue
            r = nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)
            if s[0] == t[0]:  # same width: start from the identity, so equal features give zero loss
                nn.init.dirac_(r.weight)
            self.regressors.append(r)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        return sum((r(s) - t).pow(2).mean() for r, (s, t) in zip(self.regressors, spatial_pairs(batch)))
