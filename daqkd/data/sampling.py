"""Seeded, class-stratified index selection, used for the validation split, training subsets and
the DA metric's subsample."""
from __future__ import annotations

import torch


def stratified_indices(targets: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices into ``targets`` with class proportions kept (largest remainder), sorted.

    Every class present in ``targets`` gets at least one index when ``n`` ≥ number of classes.
    """
    total = len(targets)
    if not 0 < n <= total:
        raise ValueError(f"cannot draw {n} samples from {total}")
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(targets, return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    if n >= len(classes):
        quota = quota.clamp(min=1)
    # Hand out what is left to the largest remainders, deterministically.
    short = n - int(quota.sum())
    if short > 0:
        order = torch.argsort(exact - exact.floor(), descending=True, stable=True)
        quota[order[:short]] += 1
    elif short < 0:
        order = torch.argsort(quota, descending=True, stable=True)
        for i in order[: -short]:
            quota[i] -= 1
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(targets == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:q]])
    return torch.sort(torch.cat(chosen)).values


def split_indices(targets: torch.Tensor, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (keep, holdout) partition of ``range(len(targets))``."""
    held = stratified_indices(targets, holdout, seed)
    mask = torch.ones(len(targets), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held
