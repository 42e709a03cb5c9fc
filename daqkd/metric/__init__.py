"""The teacher-based DA metric M = DEV − CMI and its scorer."""
from daqkd.metric.core import (
    class_prototypes,
    contextual_mutual_information,
    label_deviation,
    metric_score,
    variance_score,
)
from daqkd.metric.scoring import AugmentScore, format_ranking, score_augmentation

__all__ = [
    "AugmentScore",
    "class_prototypes",
    "contextual_mutual_information",
    "format_ranking",
    "label_deviation",
    "metric_score",
    "score_augmentation",
    "variance_score",
]
