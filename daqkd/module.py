"""The LightningModule: a quantized student trained with QAT+KD from a frozen FP teacher."""
from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAccuracy

from daqkd.errors import TrainingDiverged
from daqkd.kd import Distiller, cross_entropy
from daqkd.quant import quantizer_parameters
from daqkd.torchutil import hard_labels


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{where}: the loss is {loss.item()}. Lower the learning rate (optim.optimizer.lr, optim.quant_lr), "
            "check the data normalisation, or resume from the last good checkpoint with ckpt_path=last."
        )


class QATKDModule(L.LightningModule):
    """Owns the student (trained), the teacher (frozen, always in eval mode) and the Distiller
    (the objective and its KD method's learnable heads, optimised with the weights and checkpointed).

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``): the optimizer gets two
    parameter groups, the network's weights (and KD heads) at its own lr and the quantizer parameters
    at ``quant_lr`` without weight decay; the scheduler is stepped every optimisation step.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distiller: Distiller,
        num_classes: int,
        optimizer: Callable,
        quant_lr: float,
        scheduler: Callable | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.channels_last = channels_last
        if channels_last:  # NHWC weights; compute_loss gives the inputs the same layout
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        self.student, self.teacher, self.distiller = student, teacher, distiller
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

    def on_train_end(self) -> None:
        self.distiller.release()

    @property
    def progress(self) -> float:
        """Fraction of training done, for KD methods with a warm-up."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (a module used on its own): no warm-up
            return 1.0
        if trainer is None or not math.isfinite(trainer.estimated_stepping_batches):
            return 1.0
        return min(self.global_step / max(trainer.estimated_stepping_batches, 1), 1.0)

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(loss, weighted terms, student logits) for one batch."""
        x, y = batch
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.distiller(x, y, self.progress)

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
        heads = list(self.distiller.parameters())
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
