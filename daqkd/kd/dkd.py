"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022).

The KD loss is split into target-class KD (TCKD: binary target vs. rest) and non-target-class KD
(NCKD: the distribution over the other classes), weighted separately:
    L = w(progress)·T²·(α·KL(b_t ‖ b_s) + β·KL(p̂_t ‖ p̂_s)),  α = 1, β = 8, T = 4,
with a linear warm-up w = min(progress / warmup, 1). The paper warms up over 20 of 240 epochs;
``warmup`` is that fraction of training (20/240), so short runs keep the same shape. With soft
(mixed) labels the target class is the argmax.
"""
import torch
import torch.nn.functional as F

from daqkd.kd.taps import KDBatch, KDMethod
from daqkd.registry import KD_METHODS
from daqkd.torchutil import hard_labels


def dkd_terms(zs: torch.Tensor, zt: torch.Tensor, target: torch.Tensor, temperature: float):
    """(TCKD, NCKD), each averaged over the batch and multiplied by T²."""
    t = temperature
    gt = F.one_hot(target, zs.shape[1]).bool()
    ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1).clamp_min(1e-12)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1).clamp_min(1e-12)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * t * t
    # Non-target distribution: mask the target logit out with a large negative number.
    log_ps_nt = F.log_softmax(zs / t - 1000.0 * gt, 1)
    log_pt_nt = F.log_softmax(zt / t - 1000.0 * gt, 1)
    nckd = (log_pt_nt.exp() * (log_pt_nt - log_ps_nt)).masked_fill(gt, 0).sum(1).mean() * t * t
    return tckd, nckd


@KD_METHODS.register("dkd")
class DecoupledKD(KDMethod):
    uses_features = False  # a logit method: no feature taps

    def __init__(self, tckd_weight: float = 1.0, nckd_weight: float = 8.0, temperature: float = 4.0, warmup: float = 20 / 240):
        super().__init__()
        self.a, self.b, self.t, self.warmup = tckd_weight, nckd_weight, temperature, warmup

    def forward(self, batch: KDBatch) -> torch.Tensor:
        if batch.targets is None:
            raise ValueError("DKD needs labels (its target class); use kd=kd or kd=sqakd for label-free training")
        y = hard_labels(batch.targets)
        tckd, nckd = dkd_terms(batch.student_logits, batch.teacher_logits, y, self.t)
        ramp = min(batch.progress / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * (self.a * tckd + self.b * nckd)
