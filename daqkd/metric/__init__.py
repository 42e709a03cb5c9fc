"""The teacher-based DA metric M = DEV − CMI, the baseline selectors, and the scorer."""
from daqkd.metric.core import (
    bootstrap_metric,
    class_prototypes,
    contextual_mutual_information,
    entropy,
    label_deviation,
    metric_score,
    variance_groups,
    variance_score,
)
from daqkd.metric.scoring import (
    SELECTORS,
    AugmentScore,
    Selection,
    format_ranking,
    score_augmentation,
    score_augmentations,
    select_augmentation,
    selector_value,
)

__all__ = [
    "SELECTORS",
    "AugmentScore",
    "Selection",
    "bootstrap_metric",
    "class_prototypes",
    "contextual_mutual_information",
    "entropy",
    "format_ranking",
    "label_deviation",
    "metric_score",
    "score_augmentation",
    "score_augmentations",
    "select_augmentation",
    "selector_value",
    "variance_groups",
    "variance_score",
]
