"""The LightningDataModule: one data set, a seeded validation split carved from its training set,
and a training pipeline whose DA can be swapped (the DA metric callback installs its pick)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from daqkd.augment import Augmentation, BatchAugmentCollate, build_augmentation, sample_pipeline
from daqkd.data.sampling import split_indices, stratified_indices
from daqkd.data.sources import load_image_sets

log = logging.getLogger(__name__)


class IndexedImages(Dataset):
    """``images[indices[i]]`` through ``transform``; returns (float tensor [C, H, W], int label)."""

    def __init__(self, source: ImageSet, indices: torch.Tensor, transform):
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.transform(self.source.image(j)), int(self.source.targets[j])


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
        padding: int = 4,
        flip: bool = True,
        val_size: int = 5000,
        train_subset: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 2,
        seed: int = 0,
        download: bool = False,
        source_options: Mapping[str, Any] | None = None,
        augment_params: Mapping[str, Mapping[str, Any]] | None = None,
        test_subset: int | None = None,
    ):
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"dataset {name}: mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        self.name, self.root = name, Path(root)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.mean, self.std, self.padding, self.flip = list(mean), list(std), padding, flip
        self.val_size, self.train_subset, self.test_subset = val_size, train_subset, test_subset
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed, self.download = seed, download
        self.source_options = dict(source_options or {})
        self.augment_params = dict(augment_params or {})
        self.train_set = None  # an ImageSet (in memory) or ImageFiles (decoded per item) after setup()
        self.train_augment: Augmentation = build_augmentation("minimal", num_classes)

    # ------------------------------------------------------------------ set-up

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = load_image_sets(self.name, self.root, download=self.download, **self.source_options)
        shape = tuple(train.image(0).shape)
        if shape[0] != self.in_channels:
            raise ValueError(f"dataset {self.name}: files have {shape[0]} channels, config says in_channels={self.in_channels}")
        self.train_set, self.test_set = train, test
        self.train_idx, self.val_idx = split_indices(train.targets, self.val_size, self.seed)
        if self.train_subset is not None and self.train_subset < len(self.train_idx):
            keep = stratified_indices(train.targets[self.train_idx], self.train_subset, self.seed + 1)
            self.train_idx = self.train_idx[keep]
        self.test_idx = torch.arange(len(test))
        if self.test_subset is not None and self.test_subset < len(test):
            self.test_idx = stratified_indices(test.targets, self.test_subset, self.seed + 2)
        log.info(
            "%s: %d train / %d val / %d test images of shape %s",
            self.name, len(self.train_idx), len(self.val_idx), len(self.test_idx), shape,
        )

    def set_train_augment(self, name: str) -> None:
        """Train with DA ``name`` from now on (next ``train_dataloader()`` call)."""
        self.train_augment = self.build_augment(name)

    def build_augment(self, name: str) -> Augmentation:
        return build_augmentation(name, self.num_classes, self.augment_params)

    # ------------------------------------------------------------------ pipelines

    def train_transform(self, augment: Augmentation):
        return sample_pipeline(augment.sample, self.mean, self.std, self.image_size, self.padding, self.flip)

    def eval_transform(self):
        return sample_pipeline(None, self.mean, self.std)

    def _loader(self, dataset, batch_size, shuffle=False, drop_last=False, collate=None, generator=None):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=False,
            collate_fn=collate or BatchAugmentCollate(None),
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        aug = self.train_augment
        ds = IndexedImages(self.train_set, self.train_idx, self.train_transform(aug))
        drop = len(ds) > self.batch_size
        return self._loader(ds, self.batch_size, shuffle=True, drop_last=drop, collate=BatchAugmentCollate(aug.batch))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(IndexedImages(self.train_set, self.val_idx, self.eval_transform()), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(IndexedImages(self.test_set, self.test_idx, self.eval_transform()), self.eval_batch_size)

    def augment_loader(self, name: str, num_samples: int | None, batch_size: int, seed: int) -> DataLoader:
        """A seeded, class-stratified subsample of the training split under DA ``name``, exactly as
        training would apply it (base pipeline → DA → normalise, batch DA after collation).

        Each ``iter()`` draws fresh augmentations; the sequence of draws is fixed by ``seed``.
        """
        self.setup()
        idx = self.train_idx
        if num_samples is not None and num_samples < len(idx):
            idx = idx[stratified_indices(self.train_set.targets[idx], num_samples, seed)]
        aug = self.build_augment(name)
        ds = IndexedImages(self.train_set, idx, self.train_transform(aug))
        gen = torch.Generator().manual_seed(seed)
        return self._loader(ds, batch_size, collate=BatchAugmentCollate(aug.batch), generator=gen)

    def calibration_batch(self, size: int) -> torch.Tensor:
        """``size`` clean, normalised training images (stratified, fixed by the seed)."""
        self.setup()
        size = min(size, len(self.train_idx))
        idx = self.train_idx[stratified_indices(self.train_set.targets[self.train_idx], size, self.seed + 3)]
        tf = self.eval_transform()
        return torch.stack([tf(self.train_set.image(int(j))) for j in idx])
