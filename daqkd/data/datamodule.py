"""The LightningDataModule: one data set, a seeded validation split carved from its training set,
and loaders that all apply their DA through one ``AugmentPipeline`` definition.

The training DA is installed once, by ``set_train_augment`` (the DA selection callback calls it
before Lightning asks for the first loader); changing it after a training loader exists is an error.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from daqkd.augment import AugmentedImages, AugmentPipeline, SeededSampler, build_augmentation, derive_seed
from daqkd.augment.pipeline import CandidateCollate, CandidateImages, CandidateRounds
from daqkd.data.sampling import split_indices, stratified_indices
from daqkd.data.sources import check_source_options, load_image_sets
from daqkd.errors import ConfigError

log = logging.getLogger(__name__)


def worker_context(num_workers: int):
    """The platform's own start method for loader workers. A sweep launcher may install another
    default in its job processes (joblib's loky, whose processes cannot start a DataLoader's)."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0]) if num_workers > 0 else None


def interleaved_order(targets: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation of ``targets``' positions: each class's positions shuffled, then taken one per
    class at a time, the classes in a new shuffled order each time (until every class runs out)."""
    gen = torch.Generator().manual_seed(seed)
    queues = {int(c): torch.nonzero(targets == c).flatten() for c in torch.unique(targets)}
    queues = {c: q[torch.randperm(len(q), generator=gen)].tolist() for c, q in queues.items()}
    order, depth = [], 0
    while any(depth < len(q) for q in queues.values()):
        classes = [c for c, q in queues.items() if depth < len(q)]
        for i in torch.randperm(len(classes), generator=gen).tolist():
            order.append(queues[classes[i]][depth])
        depth += 1
    return torch.tensor(order, dtype=torch.long)


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        padding: int,
        flip: bool,
        val_size: int | float,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
        train_subset: int | None = None,
        test_subset: int | None = None,
        split_seed: int | None = None,
        download: bool = False,
        source_options: Mapping[str, Any] | None = None,
        augment_params: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        """The values come from conf/base/datamodule.yaml and the data set's file (the one source of
        defaults); ``None`` subsets mean the whole split. ``split_seed`` fixes which images form the
        validation split and the subsets (``None``: ``seed``); ``seed`` drives everything else."""
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"dataset {name}: mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        self.name, self.root = name, Path(root)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.mean, self.std, self.padding, self.flip = list(mean), list(std), padding, flip
        self.val_size, self.train_subset, self.test_subset = val_size, train_subset, test_subset
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed, self.download = seed, download
        self.split_seed = seed if split_seed is None else split_seed
        self.source_options = dict(source_options or {})
        check_source_options(name, self.source_options)
        self.augment_params = dict(augment_params or {})
        self.train_set = None  # an ImageSet (in memory) or ImageFiles (decoded per item) after setup()
        self._train_augment: str | None = None
        self._train_loader_built = False

    # ------------------------------------------------------------------ set-up

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = load_image_sets(self.name, self.root, download=self.download, **self.source_options)
        shape = tuple(train.image(0).shape)
        if shape[0] != self.in_channels:
            raise ConfigError(
                f"dataset {self.name}: the images have {shape[0]} channels, but dataset.in_channels={self.in_channels}; "
                f"set dataset.in_channels={shape[0]} (with {shape[0]} values in dataset.datamodule.mean and std)"
            )
        self.train_set, self.test_set = train, test
        self.train_idx, self.val_idx = split_indices(train.targets, self.validation_count(len(train)), self.split_seed)
        if self.train_subset is not None and self.train_subset < len(self.train_idx):
            keep = stratified_indices(train.targets[self.train_idx], self.train_subset, self.split_seed + 1)
            self.train_idx = self.train_idx[keep]
        self.test_idx = torch.arange(len(test))
        if self.test_subset is not None and self.test_subset < len(test):
            self.test_idx = stratified_indices(test.targets, self.test_subset, self.split_seed + 2)
        log.info(
            "%s: %d train / %d val / %d test images of shape %s",
            self.name, len(self.train_idx), len(self.val_idx), len(self.test_idx), shape,
        )

    @property
    def class_names(self) -> list[str]:
        """The class names in label order (the data set's own where its files name them, else "0", "1", ...)."""
        self.setup()
        names = getattr(self.train_set, "classes", None)
        return list(names) if names and len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    def validation_count(self, n_train: int) -> int:
        """``val_size`` as an image count: a count, or a fraction of the training split."""
        n_val = round(self.val_size * n_train) if isinstance(self.val_size, float) else int(self.val_size)
        n_val = max(n_val, self.num_classes)  # every class keeps a validation image
        if n_val >= n_train:
            raise ConfigError(
                f"dataset.datamodule.val_size={self.val_size} holds out {n_val} of the {n_train} training images, leaving "
                "none to train on; give a smaller count or a fraction, e.g. dataset.datamodule.val_size=0.1"
            )
        if n_val > n_train / 4:
            log.warning(
                "dataset.datamodule.val_size=%s holds out %d of %d training images (%.0f%%) for validation; "
                "a fraction such as val_size=0.1 keeps more to train on", self.val_size, n_val, n_train, 100 * n_val / n_train,
            )
        return n_val

    def fingerprint(self) -> str:
        """A short hash of the training images the teacher sees: the files' content (or the file
        list) and the split carved from them (validation size, subset, seed)."""
        self.setup()
        h = hashlib.sha256(self.train_set.fingerprint().encode())
        h.update(self.train_idx.numpy().tobytes())
        return h.hexdigest()[:16]

    def test_fingerprint(self) -> str:
        """A short hash of the test images (content and the subset used)."""
        self.setup()
        h = hashlib.sha256(self.test_set.fingerprint().encode())
        h.update(self.test_idx.numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def train_augment(self) -> str | None:
        """The installed training DA (None until ``set_train_augment``)."""
        return self._train_augment

    def set_train_augment(self, name: str) -> None:
        """Install the training DA. Once a training loader exists it cannot change: a DA swapped
        under a built loader would be silently ignored (the loader keeps its pipeline)."""
        self.pipeline(name)  # validates the name and its parameters now
        if self._train_loader_built and name != self._train_augment:
            raise RuntimeError(
                f"the training DA cannot change from {self._train_augment!r} to {name!r}: a training loader "
                "was already built with the old one. Install the DA before the Trainer asks for data."
            )
        self._train_augment = name

    # ------------------------------------------------------------------ pipelines and loaders

    def pipeline(self, augment: str | None) -> AugmentPipeline:
        """The training pipeline of DA ``augment`` (crop, flip, DA, normalise; batch DA after
        collation), or the evaluation pipeline (normalise only) for ``None``."""
        if augment is None:
            return AugmentPipeline(build_augmentation("minimal", self.num_classes), self.mean, self.std)
        aug = build_augmentation(augment, self.num_classes, self.augment_params)
        return AugmentPipeline(aug, self.mean, self.std, self.image_size, self.padding, self.flip)

    def loader(self, source, indices: torch.Tensor, pipeline: AugmentPipeline, batch_size: int, seed: int,
               stream: str, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        """A loader over ``source[indices]`` through ``pipeline``; its draws follow (seed, stream, epoch)."""
        return DataLoader(
            AugmentedImages(source, indices, pipeline),
            batch_size=batch_size,
            sampler=SeededSampler(len(indices), seed, stream, shuffle),
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # started once, not at every epoch
            multiprocessing_context=worker_context(self.num_workers),
            pin_memory=torch.cuda.is_available(),
            collate_fn=pipeline,
            # The loader's own seed draw (worker base seeds) must not consume the global stream.
            generator=torch.Generator().manual_seed(derive_seed(seed, stream, "loader")),
        )

    def train_loader(self, augment: str, batch_size: int | None = None) -> DataLoader:
        """Shuffled training batches under DA ``augment`` (does not install it), of the student's
        batch size or ``batch_size`` (the teacher's)."""
        self.setup()
        batch_size = batch_size or self.batch_size
        drop = len(self.train_idx) > batch_size
        return self.loader(self.train_set, self.train_idx, self.pipeline(augment), batch_size, self.seed,
                           "train", shuffle=True, drop_last=drop)

    def train_dataloader(self) -> DataLoader:
        if self._train_augment is None:
            raise RuntimeError("no training DA installed: call set_train_augment(name) first (the DA selection callback does)")
        loader = self.train_loader(self._train_augment)
        self._train_loader_built = True
        return loader

    def train_batches(self, count: int, epoch: int) -> list:
        """The first ``count`` batches of training epoch ``epoch`` under the installed DA, exactly as
        the training loader serves them (same order, same draws), made in this process: no loader
        and no worker start-up for a handful of batches (the EWGS δ estimate)."""
        if self._train_augment is None:
            raise RuntimeError("no training DA installed: call set_train_augment(name) first")
        self.setup()
        pipe = self.pipeline(self._train_augment)
        order = SeededSampler(len(self.train_idx), self.seed, "train", shuffle=True).order(epoch)
        batches = []
        for b in range(min(count, max(len(order) // self.batch_size, 1))):
            items = order[b * self.batch_size:(b + 1) * self.batch_size]
            samples = []
            for i, draw in items:
                j = int(self.train_idx[i])
                samples.append((pipe.transform(self.train_set.image(j), draw), int(self.train_set.targets[j]), draw))
            batches.append(pipe.collate(samples))
        return batches

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.train_set, self.val_idx, self.pipeline(None), self.eval_batch_size, self.seed, "val")

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self.loader(self.test_set, self.test_idx, self.pipeline(None), self.eval_batch_size, self.seed, "test")

    def metric_indices(self, num_samples: int | None, seed: int) -> torch.Tensor:
        """The DA metric's images: a class-stratified subsample of the training split fixed by
        ``seed`` alone, so every candidate is scored on the same images, in one seeded order shared
        by both passes and every candidate: the classes interleaved (each class's images shuffled,
        then one image of every class in a shuffled class order, and again), so that any first k ≥ C
        images hold every class (scoring in rounds needs a prototype per class from its first round)
        and neighbours differ in class. Data sets read class by class (ImageFolder, Tiny-ImageNet)
        would otherwise be scored class by class: CutMix would mix an image with one of its own
        class, and every ``variance`` group would hold one class."""
        self.setup()
        idx = self.train_idx
        if num_samples is not None and num_samples < len(idx):
            idx = idx[stratified_indices(self.train_set.targets[idx], num_samples, seed)]
        elif num_samples is not None and num_samples > len(idx):
            log.warning("metric.num_samples=%d, but the training split has %d images: the metric scores all of them",
                        num_samples, len(idx))
        idx = idx[interleaved_order(self.train_set.targets[idx], derive_seed(seed, "metric", "order"))]
        counts = torch.bincount(self.train_set.targets[idx], minlength=self.num_classes)
        if int(counts.min()) < 5:
            thin = {c: int(n) for c, n in enumerate(counts.tolist()) if n < 5}
            log.warning("the DA metric has fewer than 5 images of some classes (class: images %s): their prototypes "
                        "are noisy; raise metric.num_samples or add images", thin)
        return idx

    def augment_loader(self, name: str, num_samples: int | None, batch_size: int, seed: int) -> DataLoader:
        """The metric's images under DA ``name``, exactly as training applies it (the same
        ``AugmentPipeline``). Each ``iter()`` is a new epoch of draws: pass 1 and pass 2 differ,
        and the draws depend on ``seed`` and the pass, not on the candidate's position."""
        idx = self.metric_indices(num_samples, seed)
        return self.loader(self.train_set, idx, self.pipeline(name), batch_size, seed, "metric")

    def scoring_loader(self, names: Sequence[str], num_samples: int | None, batch_size: int, seed: int) -> DataLoader:
        """The metric's two passes for a whole pool in one loader: batches of (candidate index, pass,
        images, labels), candidate by candidate, pass 0 then pass 1 (its ``batch_sampler``, a
        ``CandidateRounds``, can narrow each iteration to some candidates and images). The same
        images, draws and pipelines as ``augment_loader`` gives each candidate; the workers start once
        for the pool and serve every round."""
        idx = self.metric_indices(num_samples, seed)
        pipelines = [self.pipeline(name) for name in names]
        return DataLoader(
            CandidateImages(self.train_set, idx, pipelines),
            batch_sampler=CandidateRounds(len(pipelines), len(idx), batch_size, seed, "metric"),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_context(self.num_workers),
            collate_fn=CandidateCollate(pipelines),
            generator=torch.Generator().manual_seed(derive_seed(seed, "metric", "loader")),
        )

    def calibration_batch(self, size: int) -> torch.Tensor:
        """``size`` clean, normalised training images (stratified, fixed by the seed)."""
        self.setup()
        size = min(size, len(self.train_idx))
        idx = self.train_idx[stratified_indices(self.train_set.targets[self.train_idx], size, self.seed + 3)]
        tf = self.pipeline(None).per_image
        return torch.stack([tf(self.train_set.image(int(j))) for j in idx])
