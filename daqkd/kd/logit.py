"""Logit distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015) and the
cross-entropy with hard or soft labels: the two terms of the QAT+KD objective (kd/distiller.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE with integer labels [B] or soft labels [B, C] (CutMix/MixUp)."""
    return F.cross_entropy(logits, targets)
