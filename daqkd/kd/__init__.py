"""Knowledge-distillation losses (METHOD.md §3)."""
from daqkd.kd.logit import DistillationLoss, cross_entropy, kd_kl

__all__ = ["DistillationLoss", "cross_entropy", "kd_kl"]
