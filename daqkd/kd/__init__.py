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
from daqkd.registry import KD_METHODS

# The logit-only objectives (conf/kd/kd.yaml, sqakd.yaml, none.yaml) add no method: γ·CE + α·KL only.
for _name in ("kd", "sqakd", "none"):
    KD_METHODS.add(_name, None, logit_only=True)

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
