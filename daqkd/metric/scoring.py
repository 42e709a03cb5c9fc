"""Streaming, two-pass scoring of candidate DAs with a frozen teacher (plain torch, no Lightning)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from daqkd.metric.core import EPS, cmi_sum, label_deviation, prototype_sums, prototypes_from_sums, soft_targets
from daqkd.torchutil import eval_mode, hard_labels

log = logging.getLogger(__name__)


@dataclass
class AugmentScore:
    """One candidate's record: the metric's parts plus the teacher's accuracy and CE on the DA."""

    name: str
    cmi: float
    dev: float
    m: float
    teacher_acc: float
    teacher_ce: float
    num_samples: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _teacher_probs(teacher: nn.Module, images: torch.Tensor, device) -> torch.Tensor:
    return F.softmax(teacher(images.to(device, non_blocking=True)).float(), dim=1)


@torch.no_grad()
def score_augmentation(
    name: str, teacher: nn.Module, loader: Iterable, num_classes: int, device: torch.device | str = "cpu"
) -> AugmentScore:
    """Score one DA: pass 1 builds the prototypes, pass 2 (fresh draws) the CMI (METHOD.md §1).

    ``loader`` yields (images, targets) exactly as training would see them and is iterated twice.
    The teacher runs in eval mode (BN running statistics, no dropout); its mode is restored after.
    Memory is O(C²) whatever the number of samples.
    """
    start = time.perf_counter()
    with eval_mode(teacher):
        num = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        den = torch.zeros(num_classes, dtype=torch.float64)
        for images, targets in loader:
            p = _teacher_probs(teacher, images, device).cpu()
            bn, bd = prototype_sums(p, targets, num_classes)
            num += bn
            den += bd
        q = prototypes_from_sums(num, den)

        total_kl = torch.zeros((), dtype=torch.float64)
        correct = ce = 0.0
        n = 0
        for images, targets in loader:
            p = _teacher_probs(teacher, images, device).cpu()
            total_kl += cmi_sum(p, targets, q)
            t = soft_targets(targets, num_classes)
            correct += float((p.argmax(1) == hard_labels(targets)).sum())
            ce += float(-(t * p.double().clamp_min(EPS).log()).sum())
            n += len(p)
    cmi = float(total_kl / n)
    dev = float(label_deviation(q))
    return AugmentScore(
        name=name, cmi=cmi, dev=dev, m=dev - cmi, teacher_acc=correct / n, teacher_ce=ce / n,
        num_samples=n, seconds=time.perf_counter() - start,
    )


def score_augmentations(
    teacher: nn.Module,
    datamodule,
    candidates: Sequence[str],
    num_samples: int | None,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> list[AugmentScore]:
    """Score every candidate DA with the teacher (METHOD.md §1), in order.

    Every candidate sees the same class-stratified images (fixed by ``seed``), through the same
    pipeline training uses (``datamodule.augment_loader``); only the DA's own draws differ.
    """
    scores = []
    for name in candidates:
        loader = datamodule.augment_loader(name, num_samples, batch_size, seed)
        s = score_augmentation(name, teacher, loader, datamodule.num_classes, device)
        log.info("DA metric: %-22s M=%.4f (DEV=%.4f, CMI=%.4f) in %.1fs", name, s.m, s.dev, s.cmi, s.seconds)
        scores.append(s)
    return scores


@dataclass
class Selection:
    """The training DA and how it was decided: "argmin M" over ``scores``, "fixed" by the config,
    or "restored" from a checkpoint."""

    selected: str
    how: str
    scores: list[AugmentScore]

    def as_dict(self) -> dict:
        return {"selected": self.selected, "how": self.how, "scores": [s.as_dict() for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict) -> Selection:
        return cls(d["selected"], d["how"], [AugmentScore(**s) for s in d["scores"]])


def select_augmentation(scores: Sequence[AugmentScore]) -> str:
    """argmin M (ties: the first candidate)."""
    if not scores:
        raise ValueError("no scored candidates to select from")
    return min(scores, key=lambda s: s.m).name


def format_ranking(scores: list[AugmentScore], selected: str | None = None) -> str:
    """A plain-text table of candidates sorted by M (lowest, i.e. best, first)."""
    head = f"{'rank':>4}  {'augment':<24} {'M':>9} {'DEV':>9} {'CMI':>9} {'T-acc':>7} {'T-CE':>7} {'n':>6} {'sec':>6}"
    lines = [head, "-" * len(head)]
    for r, s in enumerate(sorted(scores, key=lambda s: s.m), 1):
        mark = "  <- selected" if s.name == selected else ""
        lines.append(
            f"{r:>4}  {s.name:<24} {s.m:>9.4f} {s.dev:>9.4f} {s.cmi:>9.4f} {s.teacher_acc:>7.4f} "
            f"{s.teacher_ce:>7.4f} {s.num_samples:>6d} {s.seconds:>6.1f}{mark}"
        )
    return "\n".join(lines)
