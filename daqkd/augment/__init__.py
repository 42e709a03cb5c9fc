"""Data augmentations: the registry of candidate DAs and the one pipeline that applies them."""
from daqkd.augment.pipeline import AugmentedImages, AugmentPipeline, SeededSampler, derive_seed, draw_seeds, seeded_draws
from daqkd.augment.registry import (
    BATCH_AUGMENTS,
    PAPER_POOL,
    SAMPLE_AUGMENTS,
    Augmentation,
    available_augments,
    build_augmentation,
    sample_pipeline,
)

__all__ = [
    "BATCH_AUGMENTS",
    "PAPER_POOL",
    "SAMPLE_AUGMENTS",
    "AugmentPipeline",
    "AugmentedImages",
    "Augmentation",
    "SeededSampler",
    "available_augments",
    "build_augmentation",
    "derive_seed",
    "draw_seeds",
    "sample_pipeline",
    "seeded_draws",
]
