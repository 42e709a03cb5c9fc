"""Lightning wiring for quantizer state that is re-estimated during training."""
from __future__ import annotations

import logging
import time

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device

from daqkd.quant.ewgs import estimate_ewgs_deltas, ewgs_quantizers
from daqkd.torchutil import eval_mode

log = logging.getLogger(__name__)


class EWGSDeltaCallback(L.Callback):
    """Re-estimate every Hessian-mode EWGS δ (docs/METHOD.md §3) at the start of a training epoch, from
    the epoch's first ``num_batches`` training batches (made in process, exactly as the loader draws
    them) and ``probes`` Rademacher vectors each, with the module's own training loss.

    The cost is held to ``max_time_fraction`` of training at any data-set size, and the schedule is
    deterministic (a rerun or a resumed run estimates in the same epochs): one estimate costs about
    ``num_batches·(3 + 3·probes)`` training steps (a gradient with its graph, then one Hessian-vector
    product per probe, each about three steps' work), so after the first epoch an epoch is estimated
    when it is one of every ``every_n_epochs`` and at least cost / ``max_time_fraction`` steps have
    passed since the last estimate. Small data sets, with short epochs, get estimates spaced out.
    """

    def __init__(self, num_batches: int = 1, probes: int = 2, seed: int = 0, every_n_epochs: int = 1,
                 max_time_fraction: float = 0.05):
        self.num_batches, self.probes, self.seed = num_batches, probes, seed
        self.every_n_epochs, self.max_time_fraction = every_n_epochs, max_time_fraction
        self.last_step: int | None = None  # global step of the last estimate (checkpointed)

    @property
    def cost_in_steps(self) -> int:
        return self.num_batches * (3 + 3 * self.probes)

    def due(self, epoch: int, step: int, last_step: int | None = None) -> bool:
        """Whether epoch ``epoch``, starting at global step ``step``, gets an estimate when the last one
        was at ``last_step`` (default: this callback's)."""
        last = self.last_step if last_step is None else last_step
        if last is None:
            return True
        return epoch % self.every_n_epochs == 0 and step - last >= self.cost_in_steps / self.max_time_fraction

    def planned(self, epochs: int, steps_per_epoch: int) -> list[int]:
        """The epochs a fresh run of ``epochs`` epochs estimates δ in (the schedule, without running it)."""
        out, last = [], None
        for e in range(epochs):
            if last is None or self.due(e, e * steps_per_epoch, last):
                out.append(e)
                last = e * steps_per_epoch
        return out

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not ewgs_quantizers(pl_module.student):
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        if not self.due(epoch, step):
            log.info("EWGS δ kept from step %d in epoch %d (estimates stay within %.0f%% of training)",
                     self.last_step, epoch, 100 * self.max_time_fraction)
            return
        start = time.perf_counter()
        deltas = None
        if trainer.is_global_zero:  # one estimate, broadcast: every rank holds the same δ
            batches = [move_data_to_device(b, pl_module.device) for b in trainer.datamodule.train_batches(self.num_batches, epoch)]
            gen = torch.Generator().manual_seed(self.seed + epoch)
            # The whole module in eval mode: the estimate must not change training state (BN
            # statistics, a KD loss's memory bank).
            with eval_mode(pl_module):
                deltas = estimate_ewgs_deltas(pl_module.student, lambda b: pl_module.compute_loss(b)[0], batches, gen, self.probes)
        if trainer.world_size > 1:
            deltas = trainer.strategy.broadcast(deltas, src=0)
            for name, module in pl_module.student.named_modules():
                if name in deltas:
                    module.delta.fill_(deltas[name])
        self.last_step = step
        seconds = time.perf_counter() - start
        values = torch.tensor(list(deltas.values()))
        log.info(
            "EWGS δ re-estimated on %d batches in %.1fs: mean %.3g, min %.3g, max %.3g over %d quantizers",
            self.num_batches, seconds, values.mean(), values.min(), values.max(), len(values),
        )
        pl_module.log_dict({"ewgs/delta_mean": float(values.mean()), "ewgs/delta_max": float(values.max()),
                            "ewgs/estimate_seconds": seconds})

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_step = state_dict.get("last_step")
