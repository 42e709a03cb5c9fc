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
    floor = 1 if n >= len(classes) else 0  # every class keeps an index when there are enough to go round
    quota = torch.minimum(exact.floor().long().clamp(min=floor), counts)
    # Hand out what is left to the largest remainders among classes with images to spare, and take
    # back what is over from the largest quotas above the floor; deterministic (stable sorts).
    while (short := n - int(quota.sum())) != 0:
        if short > 0:
            room = torch.nonzero(quota < counts).flatten()
            order = room[torch.argsort((exact - quota)[room], descending=True, stable=True)]
            quota[order[:short]] += 1
        else:
            above = torch.nonzero(quota > floor).flatten()
            order = above[torch.argsort((quota - exact)[above], descending=True, stable=True)]
            quota[order[:-short]] -= 1
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
