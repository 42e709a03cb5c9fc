"""RKD: relational KD (Park et al., CVPR 2019), distance-wise and angle-wise, on the embedding.

Distance: ψ_D(i, j) = ‖e_i − e_j‖ / μ (μ: mean distance over pairs); L_D = Huber(ψ_D^s, ψ_D^t).
Angle:    ψ_A(i, j, k) = ⟨(e_i − e_j)/‖·‖, (e_k − e_j)/‖·‖⟩;    L_A = Huber(ψ_A^s, ψ_A^t).
L = w_d·L_D + w_a·L_A with the paper's w_d = 25, w_a = 50; kd.beta = 1.
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, last_embedding
from daqkd.registry import KD_METHODS


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """‖e_i − e_j‖ with a zero diagonal, twice differentiable (cdist's second derivative is NaN at
    zero distance, which broke the Hessian-based EWGS δ estimate)."""
    sq = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return sq.clamp_min(1e-12).sqrt() * off


def distance_potential(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    n = len(e)
    return d / (d.sum() / max(n * (n - 1), 1)).clamp_min(1e-12)  # mean over the off-diagonal pairs


def angle_potential(e: torch.Tensor) -> torch.Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i − e_j
    # Unit vectors with a safe norm (zero for i = j), twice differentiable unlike F.normalize at 0.
    v = diff / diff.pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
    return torch.bmm(v, v.transpose(1, 2)).flatten()  # cos of angle i-j-k for every (j, i, k)


@KD_METHODS.register("rkd")
class RelationalKD(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=(), distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.wd, self.wa = distance_weight, angle_weight

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = last_embedding(batch)
        t = t.detach()
        loss_d = F.smooth_l1_loss(distance_potential(s), distance_potential(t))
        loss_a = F.smooth_l1_loss(angle_potential(s), angle_potential(t))
        return self.wd * loss_d + self.wa * loss_a
