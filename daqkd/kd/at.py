"""AT: attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

For each pair of feature maps, the spatial attention a(F) = normalise(mean_c F^p) [B, H·W]
of student and teacher are matched: L = Σ_layers mean((a_s − a_t)²). Paper weight β = 1000.
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod, spatial_pairs
from daqkd.registry import KD_METHODS


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


@KD_METHODS.register("at")
class AttentionTransfer(KDMethod):
    def __init__(self, student_shapes=(), teacher_shapes=(), p: float = 2.0):
        super().__init__()
        self.p = p

    def forward(self, batch: KDBatch) -> torch.Tensor:
        pairs = spatial_pairs(batch)
        return sum((attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean() for s, t in pairs)
