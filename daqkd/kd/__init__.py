"""Knowledge-distillation losses (METHOD.md §3): the logit objective plus one feature/logit KD
method per file, each a plain ``nn.Module`` built as ``Loss(student_shapes, teacher_shapes, **hp)``
and called on a ``KDBatch``."""
from daqkd.kd.at import AttentionTransfer
from daqkd.kd.cc import CorrelationCongruence
from daqkd.kd.crd import ContrastiveRepresentation
from daqkd.kd.dkd import DecoupledKD
from daqkd.kd.fitnet import FitNet
from daqkd.kd.logit import DistillationLoss, cross_entropy, kd_kl
from daqkd.kd.nst import NeuronSelectivityTransfer
from daqkd.kd.pkt import ProbabilisticKT
from daqkd.kd.rkd import RelationalKD
from daqkd.kd.sp import SimilarityPreserving
from daqkd.kd.taps import FeatureTaps, KDBatch, feature_shapes
from daqkd.kd.vid import VariationalInformation

__all__ = [
    "AttentionTransfer",
    "ContrastiveRepresentation",
    "CorrelationCongruence",
    "DecoupledKD",
    "DistillationLoss",
    "FeatureTaps",
    "FitNet",
    "KDBatch",
    "NeuronSelectivityTransfer",
    "ProbabilisticKT",
    "RelationalKD",
    "SimilarityPreserving",
    "VariationalInformation",
    "cross_entropy",
    "feature_shapes",
    "kd_kl",
]
