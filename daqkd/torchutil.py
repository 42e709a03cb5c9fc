"""Small torch helpers shared by the packages: a module-mode context and label conversion."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run the body with every module in eval mode (BN running statistics, no dropout), then put
    each back in the mode it had."""
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(setting: int | str | None, loader_workers: int) -> int:
    """Set torch's intra-op threads for this process and return them: ``setting`` threads, or with
    ``"auto"`` the usable cores less one per loader worker (each worker runs one thread: PyTorch's
    worker loop sets it), at least 1, and at most OMP_NUM_THREADS when that is set. Two processes that
    each use every core slow each other down several times over (OpenMP threads spin while they wait
    for a core)."""
    if setting in (None, "auto"):
        threads = max(1, usable_cores() - max(loader_workers, 0))
        cap = os.environ.get("OMP_NUM_THREADS", "")
        if cap.isdigit() and int(cap) >= 1:
            threads = min(threads, int(cap))
    else:
        threads = int(setting)
        if threads < 1:
            raise ValueError(f"speed.threads={setting}: give auto or a number ≥ 1")
    torch.set_num_threads(threads)
    return threads


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels [B] from integer labels [B] or soft labels [B, C] (their argmax)."""
    return targets.argmax(1) if targets.ndim == 2 else targets

