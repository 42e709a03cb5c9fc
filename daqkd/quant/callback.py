"""Lightning wiring for quantizer state that is re-estimated during training."""
from __future__ import annotations

import itertools
import logging

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device

from daqkd.quant.ewgs import estimate_ewgs_deltas, ewgs_quantizers
from daqkd.torchutil import eval_mode

log = logging.getLogger(__name__)


class EWGSDeltaCallback(L.Callback):
    """Re-estimate every Hessian-mode EWGS δ at the start of each training epoch (METHOD.md §3)
    from ``num_batches`` training batches, using the module's own training loss."""

    def __init__(self, num_batches: int = 3, probes: int = 4, seed: int = 0):
        self.num_batches, self.probes, self.seed = num_batches, probes, seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not ewgs_quantizers(pl_module.student):
            return
        loader = trainer.datamodule.train_dataloader()
        loader.sampler.set_epoch(trainer.current_epoch)  # this epoch's first batches, as training draws them
        batches = [move_data_to_device(b, pl_module.device) for b in itertools.islice(loader, self.num_batches)]
        gen = torch.Generator().manual_seed(self.seed + trainer.current_epoch)
        # The whole module in eval mode: the estimate must not change training state (BN statistics,
        # a KD loss's memory bank).
        with eval_mode(pl_module):
            deltas = estimate_ewgs_deltas(pl_module.student, lambda b: pl_module.compute_loss(b)[0], batches, gen, self.probes)
        values = torch.tensor(list(deltas.values()))
        log.info(
            "EWGS δ re-estimated on %d batches: mean %.3g, min %.3g, max %.3g over %d quantizers",
            len(batches), values.mean(), values.min(), values.max(), len(values),
        )
        pl_module.log_dict({"ewgs/delta_mean": float(values.mean()), "ewgs/delta_max": float(values.max())})
