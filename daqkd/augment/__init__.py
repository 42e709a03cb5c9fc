"""Data augmentations: the registry of candidate DAs and the one pipeline that applies them."""
from daqkd.augment.pipeline import AugmentedImages, AugmentPipeline, SeededSampler, derive_seed, draw_seeds, seeded_draws
from daqkd.augment.registry import PAPER_POOL, Augmentation, build_augmentation, is_batch_augment, sample_pipeline

__all__ = [
    "PAPER_POOL",
    "AugmentPipeline",
    "AugmentedImages",
    "Augmentation",
    "SeededSampler",
    "build_augmentation",
    "is_batch_augment",
    "derive_seed",
    "draw_seeds",
    "sample_pipeline",
    "seeded_draws",
]
