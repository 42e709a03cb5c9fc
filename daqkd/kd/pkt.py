"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on the embedding.

Cosine similarities are mapped to [0, 1] and normalised per row into conditional probabilities
P(j | i); L = Σ_i KL(P_t(·|i) ‖ P_s(·|i)) / B. Weight β = 30000 (RepDistiller's setting).
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, last_embedding
from daqkd.registry import KD_METHODS

EPS = 1e-7


def conditional_probabilities(e: torch.Tensor) -> torch.Tensor:
    e = F.normalize(e, dim=1)
    sim = (e @ e.T + 1) / 2
    return sim / sim.sum(1, keepdim=True)


@KD_METHODS.register("pkt")
class ProbabilisticKT(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=()):
        super().__init__()

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = last_embedding(batch)
        ps, pt = conditional_probabilities(s), conditional_probabilities(t)
        return (pt * ((pt + EPS).log() - (ps + EPS).log())).sum(1).mean()
