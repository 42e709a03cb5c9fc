"""Small torch helpers shared by the packages: a module-mode context and label conversion."""
from __future__ import annotations

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


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels [B] from integer labels [B] or soft labels [B, C] (their argmax)."""
    return targets.argmax(1) if targets.ndim == 2 else targets
