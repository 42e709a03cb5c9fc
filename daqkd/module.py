"""The LightningModule: a quantized student trained with QAT+KD from a frozen FP teacher."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import lightning as L
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAccuracy

from daqkd.kd import DistillationLoss, FeatureTaps, KDBatch, cross_entropy
from daqkd.quant import quantizer_parameters


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels from integer [B] or soft [B, C] targets."""
    return targets.argmax(1) if targets.ndim == 2 else targets


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{where}: the loss is {loss.item()}. Lower the learning rate (optimizer.lr, optim.quant_lr), "
            "check the data normalisation, or resume from the last good checkpoint with ckpt_path=last."
        )


class QATKDModule(L.LightningModule):
    """Owns the student (trained) and the teacher (frozen, always in eval mode).

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``): the optimizer gets two
    parameter groups, the network's weights at its own lr and the quantizer parameters at
    ``quant_lr`` without weight decay; the scheduler is stepped every optimisation step.

    ``feature_loss`` (optional) is a KD method from daqkd.kd called on a ``KDBatch``; its learnable
    heads are parameters of this module, so they are optimised (with the weights) and checkpointed.
    Its features come from forward hooks on ``student_layers`` / ``teacher_layers``, attached when
    first needed and removed when training ends.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: DistillationLoss,
        num_classes: int,
        optimizer: Callable,
        quant_lr: float,
        scheduler: Callable | None = None,
        feature_loss: nn.Module | None = None,
        student_layers: Sequence[str] = (),
        teacher_layers: Sequence[str] = (),
    ):
        super().__init__()
        self.student, self.teacher, self.loss_fn = student, teacher, loss
        self.feature_loss = feature_loss
        if feature_loss is not None and len(student_layers) != len(teacher_layers):
            raise ValueError(f"kd.student_layers ({len(student_layers)}) and kd.teacher_layers ({len(teacher_layers)}) must pair up")
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self._taps: tuple[FeatureTaps, FeatureTaps] | None = None
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.optimizer_factory, self.scheduler_factory, self.quant_lr = optimizer, scheduler, quant_lr
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses batch statistics or dropout
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def _attach_taps(self) -> tuple[FeatureTaps, FeatureTaps]:
        if self._taps is None:
            self._taps = (FeatureTaps(self.student, self.student_layers), FeatureTaps(self.teacher, self.teacher_layers))
        return self._taps

    def on_train_end(self) -> None:
        if self._taps is not None:
            for taps in self._taps:
                taps.remove()
            self._taps = None

    @property
    def progress(self) -> float:
        """Fraction of training done, for losses with a warm-up."""
        trainer = self._trainer
        if trainer is None or not math.isfinite(trainer.estimated_stepping_batches):
            return 1.0
        return min(self.global_step / max(trainer.estimated_stepping_batches, 1), 1.0)

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(loss, parts, student logits) for one batch; teacher and student see the same batch."""
        x, y = batch
        taps = self._attach_taps() if self.feature_loss is not None else None
        if taps:
            for t in taps:
                t.active = True
        try:
            teacher_logits = None
            if self.loss_fn.needs_teacher or taps:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
            logits = self.student(x)
        finally:
            if taps:
                for t in taps:
                    t.active = False
        feature = None
        if taps:
            kd_batch = KDBatch(logits, teacher_logits, y, taps[0].features, taps[1].features, self.progress)
            feature = self.feature_loss(kd_batch)
            for t in taps:
                t.clear()
        loss, parts = self.loss_fn(logits, teacher_logits, y, feature)
        return loss, parts, logits

    def training_step(self, batch, batch_idx):
        loss, parts, logits = self.compute_loss(batch)
        check_finite(loss, f"training step {self.global_step}")
        self.train_acc(logits.detach(), hard_labels(batch[1]))
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items()})
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch, metric, stage):
        x, y = batch
        logits = self.student(x)
        self.log(f"{stage}/loss", cross_entropy(logits, y), prog_bar=stage == "val")
        metric(logits, hard_labels(y))
        self.log(f"{stage}/acc", metric, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        qparams = quantizer_parameters(self.student)
        qids = {id(p) for p in qparams}
        heads = list(self.feature_loss.parameters()) if self.feature_loss is not None else []
        weights = [p for p in self.student.parameters() if id(p) not in qids and p.requires_grad] + heads
        groups = [{"params": weights}]
        if qparams:
            groups.append({"params": qparams, "lr": self.quant_lr, "weight_decay": 0.0})
        optimizer = self.optimizer_factory(params=groups)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            raise ValueError("the cosine schedule needs a finite number of steps: set trainer.max_epochs or max_steps")
        scheduler = self.scheduler_factory(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
