"""SP: similarity-preserving KD (Tung & Mori, ICCV 2019).

G = row-normalise(F Fᵀ) is the [B, B] similarity of the batch's flattened activations;
L = ‖G_s − G_t‖²_F / B², on the last tap. Paper weight β = 3000. Invariant to batch order
up to the matching permutation of G.
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, last_embedding
from daqkd.registry import KD_METHODS


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f @ f.T, dim=1)


@KD_METHODS.register("sp")
class SimilarityPreserving(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=()):
        super().__init__()

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = last_embedding(batch)
        b = s.shape[0]
        return (batch_similarity(s) - batch_similarity(t)).pow(2).sum() / (b * b)
