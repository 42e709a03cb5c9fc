"""One definition of how a DA is applied, shared by training and by the DA metric.

An ``AugmentPipeline`` turns dataset items into a batch exactly as training sees them:
per image, base crop/flip → DA → float → normalise; per batch, after collation, the batch DA
(CutMix, MixUp), which turns integer labels [B] into soft labels [B, C].

Every random draw is seeded per image: a ``SeededSampler`` yields (index, draw seed) pairs, where
the draw seed depends only on (seed, stream, epoch, index). So an image gets the same augmentation
whatever the worker count, the batch order or the process it runs in, two epochs (or two metric
passes) draw afresh, and two DAs scored with the same seed start from the same base crop and flip.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler, default_collate

from daqkd.augment.registry import Augmentation, sample_pipeline

_MAX_SEED = 2**62


def derive_seed(*parts) -> int:
    """A 62-bit seed from any tuple of ints and strings (stable across processes and runs)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % _MAX_SEED


def draw_seeds(n: int, seed: int, stream: str, epoch: int) -> torch.Tensor:
    """Per-item draw seeds [n] (int64) for one epoch of one stream."""
    gen = torch.Generator().manual_seed(derive_seed(seed, stream, epoch))
    return torch.randint(0, _MAX_SEED, (n,), generator=gen, dtype=torch.int64)


class seeded_draws:
    """Context manager: run the body with the CPU generator seeded by ``seed``, then restore it,
    so seeding an image's draws has no effect outside (the main process keeps its own stream).

    Why swap the global generator, per image: torchvision's v2 transforms (AutoAugment, AugMix,
    RandomCrop ...) draw from ``torch.default_generator`` and take no generator argument, so the only
    way to make an image's augmentation a function of (seed, stream, epoch, index), whatever worker,
    batch or process draws it, is to seed that generator around the image's transform. Restoring the
    state afterwards keeps every other draw of the process (init, dropout, the sampler) as it was."""

    __slots__ = ("seed", "state")

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.default_generator.set_state(self.state)
        return False


class SeededSampler(Sampler):
    """Yields ``(i, draw_seed)`` for i in range(n): shuffled per epoch when ``shuffle``, in order
    otherwise. Lightning calls ``set_epoch`` before each training epoch; without it each new
    iteration moves to the next epoch, so two passes over a scoring loader draw afresh."""

    def __init__(self, n: int, seed: int, stream: str, shuffle: bool = False):
        if n <= 0:
            raise ValueError(f"a sampler needs at least one item, got {n}")
        self.n, self.seed, self.stream, self.shuffle = n, seed, stream, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> list[tuple[int, int]]:
        """The (index, draw seed) pairs of ``epoch``, in the order they are served."""
        seeds = draw_seeds(self.n, self.seed, self.stream, epoch)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, "order", epoch))
            idx = torch.randperm(self.n, generator=gen)
        else:
            idx = torch.arange(self.n)
        return list(zip(idx.tolist(), seeds[idx].tolist()))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        return iter(self.order(epoch))


class AugmentPipeline:
    """A DA as training applies it. ``transform(image_uint8, draw_seed)`` → normalised float32
    [C, H, W]; ``collate(samples)`` → (images [B, C, H, W], labels [B] or soft labels [B, C]).
    Picklable, so it runs inside DataLoader workers."""

    def __init__(
        self,
        augmentation: Augmentation,
        mean: Sequence[float],
        std: Sequence[float],
        crop_size: int | None = None,
        padding: int = 0,
        flip: bool = False,
    ):
        self.augmentation = augmentation
        self.per_image = sample_pipeline(augmentation.sample, mean, std, crop_size, padding, flip)
        self.per_batch = augmentation.batch

    @property
    def name(self) -> str:
        return self.augmentation.name

    def transform(self, image: torch.Tensor, draw_seed: int) -> torch.Tensor:
        with seeded_draws(draw_seed):
            return self.per_image(image)

    def collate(self, samples: list[tuple[torch.Tensor, int, int]]):
        images, labels, seeds = zip(*samples)
        images, labels = default_collate(images), torch.as_tensor(labels)
        if self.per_batch is not None:
            # The batch's draws follow from its images' seeds (and so from the epoch and the order).
            with seeded_draws(derive_seed("batch", *seeds[:4], len(seeds))):
                images, labels = self.per_batch(images, labels)
        return images, labels

    def __call__(self, samples):  # so the pipeline is itself a collate_fn
        return self.collate(samples)


class AugmentedImages(Dataset):
    """Items ``indices[i]`` of an image source through ``pipeline``. Indexed by the
    ``(i, draw_seed)`` pairs a ``SeededSampler`` yields; returns (image, label, draw_seed)."""

    def __init__(self, source, indices: torch.Tensor, pipeline: AugmentPipeline):
        self.source, self.indices, self.pipeline = source, indices, pipeline

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]):
        i, draw_seed = item
        j = int(self.indices[i])
        return self.pipeline.transform(self.source.image(j), draw_seed), int(self.source.targets[j]), draw_seed


class CandidateImages(Dataset):
    """The DA metric's images under several candidate pipelines at once, so one loader (one set of
    workers) serves a whole pool. Indexed by ``(candidate, pass, i, draw_seed)``; returns
    (image, label, draw_seed, candidate, pass)."""

    def __init__(self, source, indices: torch.Tensor, pipelines: Sequence[AugmentPipeline]):
        self.source, self.indices, self.pipelines = source, indices, list(pipelines)

    def __len__(self) -> int:
        return len(self.pipelines) * len(self.indices)

    def __getitem__(self, item: tuple[int, int, int, int]):
        k, p, i, draw_seed = item
        j = int(self.indices[i])
        return self.pipelines[k].transform(self.source.image(j), draw_seed), int(self.source.targets[j]), draw_seed, k, p


class CandidateRounds(Sampler):
    """Batches of ``(candidate, pass, i, draw_seed)`` for the DA metric, one round per iteration: for
    each candidate still in the race (``active``), in order, pass 0 then pass 1 over images
    ``lo``..``hi`` of the subsample, ``batch_size`` at a time (a batch never mixes candidates or
    passes). The draws of image i in pass p are those of a ``SeededSampler(n, seed, stream)`` in epoch
    p, whatever the candidate and the round: every candidate sees the same images, crops and flips,
    and scoring in rounds draws exactly what scoring all at once does. By default one round covers
    every candidate and every image; ``set_round`` narrows the next one (the sampler runs in the main
    process, so the loader's persistent workers serve every round)."""

    def __init__(self, num_candidates: int, n: int, batch_size: int, seed: int, stream: str, passes: int = 2):
        self.n, self.batch_size, self.passes = n, batch_size, passes
        self.orders = [SeededSampler(n, seed, stream).order(p) for p in range(passes)]
        self.active, self.lo, self.hi = list(range(num_candidates)), 0, n

    def set_round(self, active: Sequence[int], lo: int, hi: int) -> None:
        self.active, self.lo, self.hi = list(active), lo, hi

    def __len__(self) -> int:
        return len(self.active) * self.passes * -(-(self.hi - self.lo) // self.batch_size)

    def __iter__(self):
        for k in self.active:
            for p, order in enumerate(self.orders):
                for b in range(self.lo, self.hi, self.batch_size):
                    yield [(k, p, i, s) for i, s in order[b:min(b + self.batch_size, self.hi)]]


class CandidateCollate:
    """Collates a batch of one candidate and pass with that candidate's pipeline (its batch DA
    included); returns (candidate, pass, images, labels)."""

    def __init__(self, pipelines: Sequence[AugmentPipeline]):
        self.pipelines = list(pipelines)

    def __call__(self, samples):
        k, p = samples[0][3], samples[0][4]
        images, labels = self.pipelines[k].collate([s[:3] for s in samples])
        return k, p, images, labels
