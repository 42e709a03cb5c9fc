"""Knowledge distillation (docs/METHOD.md §4): the Distiller (the QAT+KD objective and its hooks) plus
one KD method per file, each a small ``KDMethod`` called on a ``KDBatch`` (see kd/taps.py)."""
from daqkd.kd.at import AttentionTransfer
from daqkd.kd.cc import CorrelationCongruence
from daqkd.kd.crd import ContrastiveRepresentation
from daqkd.kd.distiller import Distiller
from daqkd.kd.dkd import DecoupledKD
from daqkd.kd.fitnet import FitNet
from daqkd.kd.logit import cross_entropy, kd_kl
from daqkd.kd.nst import NeuronSelectivityTransfer
from daqkd.kd.pkt import ProbabilisticKT
from daqkd.kd.rkd import RelationalKD
from daqkd.kd.sp import SimilarityPreserving
from daqkd.kd.taps import FeatureTaps, KDBatch, KDMethod, feature_shapes
from daqkd.kd.vid import VariationalInformation

__all__ = [
    "AttentionTransfer",
    "ContrastiveRepresentation",
    "CorrelationCongruence",
    "DecoupledKD",
    "Distiller",
    "FeatureTaps",
    "FitNet",
    "KDBatch",
    "KDMethod",
    "NeuronSelectivityTransfer",
    "ProbabilisticKT",
    "RelationalKD",
    "SimilarityPreserving",
    "VariationalInformation",
    "cross_entropy",
    "feature_shapes",
    "kd_kl",
]
