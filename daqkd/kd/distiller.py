"""The Distiller: the QAT+KD objective of docs/METHOD.md §4, with its optional KD method and that
method's hooks, in one module.

    L = γ·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + β·L_method

With γ = 0 (SQAKD, Zhao & Zhao, arXiv 2403.11106) labels are never read. Teacher and student see
the same batch (with CutMix, the same mixed images, and CE takes the soft targets).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from daqkd.kd.logit import cross_entropy, kd_kl
from daqkd.kd.taps import FeatureTaps, KDBatch, KDMethod


class Distiller(nn.Module):
    """``distiller(x, targets, progress) -> (loss, parts, student_logits)``; ``parts`` holds each
    weighted term ("ce", "kd" and the method's name) for logging.

    ``method`` (optional) is a KDMethod weighted by β; it is a submodule, so its learnable heads are
    optimised and checkpointed with the LightningModule that holds the Distiller. A feature method
    reads the outputs of ``student_layers`` and ``teacher_layers`` through forward hooks, attached
    on the first call and removed by ``release()``; a logit method (DKD) gets no hooks. The student
    and the teacher are referenced, not owned: they are not part of this module's state.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        gamma: float,
        alpha: float,
        beta: float,
        temperature: float,
        method: KDMethod | None = None,
        method_name: str | None = None,
        student_layers: Sequence[str] = (),
        teacher_layers: Sequence[str] = (),
    ):
        super().__init__()
        if min(gamma, alpha, beta) < 0:
            raise ValueError(f"kd weights must be ≥ 0, got gamma={gamma} alpha={alpha} beta={beta}")
        if gamma == 0 and alpha == 0 and beta == 0:
            raise ValueError("kd.gamma, kd.alpha and kd.beta are all 0: nothing would be trained")
        if temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {temperature}")
        if beta > 0 and method is None:
            raise ValueError(f"kd.beta={beta} weighs a KD method, but none is given; choose one (kd=at, crd, ...)")
        if method is not None and method.uses_features and len(student_layers) != len(teacher_layers):
            raise ValueError(f"kd.student_layers ({len(student_layers)}) and kd.teacher_layers ({len(teacher_layers)}) must pair up")
        self.gamma, self.alpha, self.beta, self.temperature = gamma, alpha, beta, temperature
        self.method, self.method_name = method, method_name or (type(method).__name__.lower() if method else None)
        self._models = (student, teacher)  # a tuple: referenced, not registered as submodules
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self._taps: tuple[FeatureTaps, FeatureTaps] | None = None

    @property
    def uses_taps(self) -> bool:
        return self.method is not None and self.beta > 0 and self.method.uses_features

    @property
    def needs_teacher(self) -> bool:
        return self.alpha > 0 or self.beta > 0

    @contextmanager
    def _recording(self) -> Iterator[tuple[FeatureTaps, FeatureTaps] | None]:
        if not self.uses_taps:
            yield None
            return
        if self._taps is None:
            student, teacher = self._models
            self._taps = (FeatureTaps(student, self.student_layers), FeatureTaps(teacher, self.teacher_layers))
        for t in self._taps:
            t.active = True
        try:
            yield self._taps
        finally:
            for t in self._taps:
                t.active = False

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None, progress: float = 1.0):
        student, teacher = self._models
        with self._recording() as taps:
            teacher_logits = None
            if self.needs_teacher:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            logits = student(x)
        parts: dict[str, torch.Tensor] = {}
        if self.gamma > 0:
            parts["ce"] = self.gamma * cross_entropy(logits, targets)
        if self.alpha > 0:
            parts["kd"] = self.alpha * kd_kl(logits, teacher_logits, self.temperature)
        if self.beta > 0:
            s_feat, t_feat = (taps[0].features, taps[1].features) if taps else ([], [])
            parts[self.method_name] = self.beta * self.method(KDBatch(logits, teacher_logits, targets, s_feat, t_feat, progress))
            if taps:
                for t in taps:
                    t.clear()
        return sum(parts.values()), parts, logits

    def release(self) -> None:
        """Remove the feature hooks (they come back on the next call)."""
        if self._taps is not None:
            for t in self._taps:
                t.remove()
            self._taps = None
