"""The candidate data augmentations (docs/METHOD.md §2): a registry of per-image and per-batch DAs.

A DA is looked up by name in a registry. Per-image DAs act on uint8 tensors [C, H, W] inside
DataLoader workers, after the base pipeline (random crop with padding, horizontal flip) and before
conversion to float and normalisation. Batch DAs (CutMix, MixUp) act on the collated, normalised
batch and turn integer labels [B] into soft labels [B, C].

Names compose with ``+``: ``trivialaugment+cutmix`` is TrivialAugment per image, CutMix per batch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from daqkd.registry import AUGMENTS, list_augments

# The pools of candidates (conf/pool/*.yaml read them through ${daqkd.pool:<name>}): the DA paper's 7,
# and the reference code's 8 base DAs, each without and with CutMix.
PAPER_POOL = (
    "minimal",
    "autoaugment_cifar10",
    "autoaugment_imagenet",
    "augmix",
    "cutmix",
    "randaugment",
    "trivialaugment",
)
_REFERENCE_BASE = ("minimal", "autoaugment_cifar10", "autoaugment_imagenet", "autoaugment_svhn", "augmix", "randaugment",
                   "trivialaugment", "random_erasing")
REFERENCE_POOL = _REFERENCE_BASE + ("cutmix",) + tuple(f"{d}+cutmix" for d in _REFERENCE_BASE[1:])


def _autoaugment(policy: str) -> Callable[..., v2.Transform]:
    def build(**kw) -> v2.Transform:
        return v2.AutoAugment(v2.AutoAugmentPolicy(policy), **kw)

    return build


def _augmix(severity: int = 3, mixture_width: int = 3, chain_depth: int = -1, alpha: float = 1.0, **kw):
    return v2.AugMix(severity=severity, mixture_width=mixture_width, chain_depth=chain_depth, alpha=alpha, **kw)


def _randaugment(num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, **kw):
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins, **kw)


def _random_erasing(p: float = 0.5, **kw):
    # RandomErasing works on any dtype; on uint8 it erases with value 0 unless told otherwise.
    return v2.RandomErasing(p=p, **kw)


# Per-image DAs: factory(**params) -> uint8 transform (None: nothing beyond the base crop and flip);
# batch DAs (batch=True): factory(num_classes, **params) -> transform on (images, labels).
# Defaults are the paper's settings. daqkd.registry.AUGMENTS; list_augments() lists them.
AUGMENTS.add("minimal", None)
AUGMENTS.add("autoaugment_cifar10", _autoaugment("cifar10"))
AUGMENTS.add("autoaugment_imagenet", _autoaugment("imagenet"))
AUGMENTS.add("autoaugment_svhn", _autoaugment("svhn"))
AUGMENTS.add("augmix", _augmix)
AUGMENTS.add("randaugment", _randaugment)
AUGMENTS.add("trivialaugment", lambda **kw: v2.TrivialAugmentWide(**kw))
AUGMENTS.add("random_erasing", _random_erasing)
AUGMENTS.add("cutmix", lambda num_classes, alpha=1.0: v2.CutMix(num_classes=num_classes, alpha=alpha), batch=True)
AUGMENTS.add("mixup", lambda num_classes, alpha=1.0: v2.MixUp(num_classes=num_classes, alpha=alpha), batch=True)


def is_batch_augment(name: str) -> bool:
    return bool(AUGMENTS.meta(name).get("batch"))


@dataclass(frozen=True)
class Augmentation:
    """A resolved DA: what runs per image and what runs per batch (either may be None)."""

    name: str
    sample: v2.Transform | None
    batch: v2.Transform | None


def build_augmentation(name: str, num_classes: int, params: Mapping[str, Mapping[str, Any]] | None = None) -> Augmentation:
    """Resolve ``name`` (e.g. ``"augmix"`` or ``"trivialaugment+cutmix"``) to an Augmentation.

    ``params`` maps a part's name to keyword overrides of its paper defaults.
    """
    params = params or {}
    sample, batch = [], []
    for part in name.split("+"):
        kw = dict(params.get(part, {}))
        if part not in AUGMENTS:
            raise ValueError(
                f"unknown augmentation {part!r} in {name!r}; available: {', '.join(list_augments())} "
                "(combine a per-image DA with a batch DA using '+', e.g. trivialaugment+cutmix)"
            )
        factory = AUGMENTS.get(part)
        if is_batch_augment(part):
            batch.append(factory(num_classes, **kw))
        elif factory is not None:
            sample.append(factory(**kw))
    if len(batch) > 1:
        raise ValueError(f"{name!r} combines {len(batch)} batch augmentations; use at most one")
    sample_t = None if not sample else (sample[0] if len(sample) == 1 else v2.Compose(sample))
    return Augmentation(name, sample_t, batch[0] if batch else None)


def sample_pipeline(
    augment: v2.Transform | None,
    mean: Sequence[float],
    std: Sequence[float],
    crop_size: int | None = None,
    padding: int = 0,
    flip: bool = False,
) -> v2.Compose:
    """uint8 [C, H, W] → normalised float32 [C, H, W]: base crop/flip → DA → float → normalise.

    With ``crop_size=None`` and ``flip=False`` this is the evaluation pipeline.
    """
    steps: list[v2.Transform] = []
    if crop_size is not None:
        steps.append(v2.RandomCrop(crop_size, padding=padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment is not None:
        steps.append(augment)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
