"""CC: correlation congruence (Peng et al., ICCV 2019), on the embedding.

The batch's correlation matrix uses the Gaussian RBF kernel on L2-normalised embeddings,
approximated by its order-P Taylor series:
    k(x, y) ≈ Σ_{p=0..P} e^{−2γ} (2γ)^p / p! · (xᵀy)^p,     L = ‖K_s − K_t‖²_F / B².
Paper setting γ = 0.4, P = 2; weight β = 0.02.
"""
import math

import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, last_embedding
from daqkd.registry import KD_METHODS


def taylor_rbf(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    g = e @ e.T
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * g.pow(p) for p in range(order + 1))


@KD_METHODS.register("cc")
class CorrelationCongruence(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=(), gamma: float = 0.4, order: int = 2):
        super().__init__()
        self.gamma, self.order = gamma, order

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = (F.normalize(e, dim=1) for e in last_embedding(batch))
        b = s.shape[0]
        return (taylor_rbf(s, self.gamma, self.order) - taylor_rbf(t, self.gamma, self.order)).pow(2).sum() / (b * b)
