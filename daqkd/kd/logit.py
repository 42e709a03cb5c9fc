"""Logit distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015) and the
combined QAT+KD objective of METHOD.md §3:

    L = γ·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + β·L_feat

With γ = 0 (SQAKD, Zhao & Zhao, arXiv 2403.11106) labels are never read.
"""
from __future__ import annotations

import torch
import torch.nn as nn
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


class DistillationLoss(nn.Module):
    """Returns (loss, parts) where parts holds each weighted term for logging."""

    def __init__(self, gamma: float = 1.0, alpha: float = 2.0, beta: float = 0.0, temperature: float = 4.0, name: str = "kd"):
        super().__init__()
        self.name = name
        if min(gamma, alpha, beta) < 0:
            raise ValueError(f"kd weights must be ≥ 0, got gamma={gamma} alpha={alpha} beta={beta}")
        if gamma == 0 and alpha == 0 and beta == 0:
            raise ValueError("kd.gamma, kd.alpha and kd.beta are all 0: nothing would be trained")
        if temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {temperature}")
        self.gamma, self.alpha, self.beta, self.temperature = gamma, alpha, beta, temperature

    @property
    def needs_teacher(self) -> bool:
        return self.alpha > 0 or self.beta > 0

    def forward(self, student_logits, teacher_logits, targets, feature_loss: torch.Tensor | None = None):
        parts: dict[str, torch.Tensor] = {}
        if self.gamma > 0:
            parts["ce"] = self.gamma * cross_entropy(student_logits, targets)
        if self.alpha > 0:
            parts["kd"] = self.alpha * kd_kl(student_logits, teacher_logits, self.temperature)
        if self.beta > 0 and feature_loss is not None:
            parts["feat"] = self.beta * feature_loss
        return sum(parts.values()), parts
