"""The LightningModule: a quantized student trained with QAT+KD from a frozen FP teacher."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAccuracy

from daqkd.errors import TrainingDiverged
from daqkd.export.deployed import Int8Forward, batchnorms, check_deploy, reestimate_batchnorm
from daqkd.kd import Distiller, cross_entropy
from daqkd.quant import quantizer_parameters
from daqkd.torchutil import hard_labels

log = logging.getLogger(__name__)

MIN_GAMMA = 1e-4  # deploy=int8: the least BatchNorm γ (a γ ≤ 0 cannot be folded into a positive weight scale)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{where}: the loss is {loss.item()}. Lower the learning rate (optim.optimizer.lr, optim.quant_lr), "
            "check the data normalisation, or resume from the last good checkpoint with ckpt_path=last."
        )


def forget_best_checkpoints(callbacks) -> None:
    """From now on val/acc is the integer model's (deploy=int8 took over): the fake-quantized epochs
    before no longer compete for the best checkpoint, the one tested and exported (their files stay)."""
    for cb in callbacks:
        if getattr(cb, "monitor", None):
            cb.best_k_models, cb.kth_best_model_path, cb.best_model_path, cb.best_model_score = {}, "", "", None
            cb.kth_value = torch.tensor(torch.inf if cb.mode == "min" else -torch.inf)


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
        deploy: str = "none",
        freeze_bn_epoch: int = 0,
        bn_batches: int = 8,
    ):
        super().__init__()
        self.deploy, self.freeze_bn_epoch, self.bn_batches = check_deploy(deploy), int(freeze_bn_epoch), int(bn_batches)
        self.int8: Int8Forward | None = None  # deploy=int8, once active: the student's forward is its integer export's
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
        if self.int8 is not None:  # deploy=int8: BatchNorm frozen (folded in the integer graph)
            for bn in batchnorms(self.student):
                bn.eval()
        return self

    # ------------------------------------------------------------------ quantizer.deploy=int8

    def activate_int8(self, bn_batches: list[torch.Tensor], calibration: torch.Tensor) -> None:
        """From now on the student trains and evaluates through its integer export (daqkd.export.deployed):
        BatchNorm statistics re-estimated on ``bn_batches`` and frozen, the stream's 8-bit ranges
        calibrated on ``calibration`` as the export does."""
        from daqkd.export.int8 import Int8Exporter
        from daqkd.quant.convert import freeze

        reestimate_batchnorm(self.student, bn_batches)
        self._install_int8(Int8Exporter(freeze(self.student)[0], calibration).ranges)
        log.info("quantizer.deploy=int8 from epoch %d: BatchNorm re-estimated on %d batches and frozen, the stream's 8-bit ranges "
                 "calibrated on %d images; training, validation and test now run the integer model", self.current_epoch if self._trainer
                 else 0, len(bn_batches), len(calibration))

    def _install_int8(self, ranges: dict) -> None:
        if self.int8 is not None:
            self.int8.remove()
        self.int8 = Int8Forward(self.student, ranges)
        self.train(self.training)

    def _activate_from_data(self) -> None:
        dm = self.trainer.datamodule
        batches = [x.to(self.device) for x, _ in dm.train_batches(self.bn_batches, self.current_epoch)]
        self.activate_int8(batches, dm.calibration_batch(512).to(self.device))
        forget_best_checkpoints(self.trainer.checkpoint_callbacks)

    def on_train_epoch_start(self) -> None:
        if self.deploy == "int8" and self.int8 is None and self.current_epoch >= self.freeze_bn_epoch:
            self._activate_from_data()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.int8 is not None:  # a folded BatchNorm's γ/σ is a DequantizeLinear scale: it must stay positive
            with torch.no_grad():
                for bn in batchnorms(self.student):
                    if bn.affine:
                        bn.weight.clamp_(min=MIN_GAMMA)

    def on_test_start(self) -> None:
        if self.deploy == "int8" and self.int8 is None:  # what is tested is the integer model, trained through or not
            self._activate_from_data()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["deploy_int8"] = {"ranges": self.int8.ranges} if self.int8 is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("deploy_int8")
        if state:
            self._install_int8(state["ranges"])
        elif self.int8 is not None:  # a checkpoint from before activation (freeze_bn_epoch > 0): the plain student again
            self.int8.remove()
            self.int8 = None
            self.train(self.training)

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
