"""NST: neuron selectivity transfer (Huang & Wang, "Like What You Like", arXiv 1707.01219).

Each channel's [H·W] activation pattern is L2-normalised; the channel distributions of student
and teacher are matched by MMD with the polynomial kernel k(a, b) = (aᵀb)²:
    L = mean k(s, s) + mean k(t, t) − 2·mean k(s, t), summed over layers. Paper weight β = 50.
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, spatial_pairs
from daqkd.registry import KD_METHODS


def poly_mmd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s [B, Cs, N], t [B, Ct, N] (rows unit-norm) → MMD² with k(a, b) = (aᵀb)², averaged over B."""
    k = lambda a, b: (a @ b.transpose(1, 2)).pow(2).mean((1, 2))  # noqa: E731
    return (k(s, s) + k(t, t) - 2 * k(s, t)).mean()


@KD_METHODS.register("nst")
class NeuronSelectivityTransfer(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=()):
        super().__init__()

    def forward(self, batch: KDBatch) -> torch.Tensor:
        total = 0.0
        for s, t in spatial_pairs(batch):
            total = total + poly_mmd(F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2))
        return total
