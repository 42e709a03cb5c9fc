"""Feature taps: forward hooks on named modules, so feature KD needs no edits to the models."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from daqkd.torchutil import eval_mode


class FeatureTaps:
    """Record the outputs of ``model``'s modules named in ``layers`` while ``active`` is set.

    >>> taps = FeatureTaps(model, ["layer1", "layer3"]); taps.active = True; model(x); taps.features
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            hint = ", ".join(n for n in modules if n and "." not in n)
            raise ValueError(f"cannot tap {missing}: no such modules; top-level modules are: {hint}")
        self.layers = list(layers)
        self.active = False
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.active:
                self._out[name] = output

        return hook

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [n for n in self.layers if n not in self._out]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the last forward pass")
        return [self._out[n] for n in self.layers]

    def clear(self) -> None:
        self._out.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)


@torch.no_grad()
def feature_shapes(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> list[torch.Size]:
    """Per-example shapes of the tapped outputs on input ``x`` (model mode is restored)."""
    taps = FeatureTaps(model, layers)
    try:
        with eval_mode(model):
            taps.active = True
            model(x[:2])
            return [f.shape[1:] for f in taps.features]
    finally:
        taps.remove()


class KDMethod(nn.Module):
    """A KD method: ``forward(batch: KDBatch) -> scalar loss``.

    Feature methods (``uses_features = True``) are built as ``Method(student_shapes, teacher_shapes, **hp)``
    from the per-example shapes of the tapped outputs and read ``batch.*_features``; logit methods
    set ``uses_features = False``, are built as ``Method(**hp)`` and get no taps. Learnable heads are
    submodules, so they are optimised with the student and checkpointed.
    """

    uses_features: bool = True


@dataclass
class KDBatch:
    """Everything a KD loss may read for one batch. ``progress`` ∈ [0, 1] is the fraction of
    training done (for warm-ups). ``targets`` are int [B] or soft [B, C]; label-free methods ignore them."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    targets: torch.Tensor | None = None
    student_features: list[torch.Tensor] = field(default_factory=list)
    teacher_features: list[torch.Tensor] = field(default_factory=list)
    progress: float = 1.0


def spatial_pairs(batch: KDBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student, teacher) pairs of [B, C, H, W] feature maps."""
    return [(s, t) for s, t in zip(batch.student_features, batch.teacher_features) if s.ndim == 4]


def last_embedding(batch: KDBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The last tap of each model, flattened to [B, D] (the penultimate embedding by default)."""
    if not batch.student_features:
        raise ValueError("this KD loss needs feature taps: set kd.student_layers / kd.teacher_layers")
    return batch.student_features[-1].flatten(1), batch.teacher_features[-1].flatten(1)


def embedding_dims(shapes) -> int:
    """Flattened size of the last tap, from per-example shapes."""
    n = 1
    for d in shapes[-1]:
        n *= d
    return n
