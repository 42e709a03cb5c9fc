"""DAMetricCallback: what Lightning needs of the DA decision, which ``run.train`` makes before the fit
(daqkd.metric.select.choose). It installs the decided DA in the datamodule in ``setup``, before
Lightning builds any loader (Lightning builds the training loader while it sets up the strategy, to
count the steps of the schedule); under several processes it broadcasts rank 0's decision, so every
rank trains with the same DA; it keeps the decision in checkpoints, so a resumed run keeps its DA;
and it logs the scores to the run's loggers.
"""
from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from daqkd.metric.scoring import SELECTORS, Selection, selector_value
from daqkd.metric.select import SCORE_FIELDS, STATE_KEY

log = logging.getLogger(__name__)


class DAMetricCallback(L.Callback):
    """Installs ``selection`` (decided on rank 0; None on the other ranks of a DDP run) and keeps it
    in checkpoints. The name is the checkpoint's key for it, kept from earlier versions."""

    def __init__(self, selection: Selection | None, log_scores: bool = True):
        self.selection, self.log_scores = selection, log_scores  # a resumed run logged them the first time

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.selection = trainer.strategy.broadcast(self.selection, src=0)
        trainer.datamodule.set_train_augment(self.selection.selected)
        if trainer.is_global_zero and self.selection.scores and self.log_scores:
            rows = [s.as_dict() for s in self.selection.scores]
            # Each selector under its name: the record's own field where it has one (so cmi and teacher_acc
            # keep their signs), else the selector's value (a selector added without a field of its own).
            metrics = {f"augment/{r['name']}/{k}": r[k] if k in r else selector_value(s, k)
                       for s, r in zip(self.selection.scores, rows) for k in (*SELECTORS, "dev", "cmi")}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)
                if isinstance(logger, WandbLogger):
                    logger.log_table("augment_scores", columns=SCORE_FIELDS, data=[[r[k] for k in SCORE_FIELDS] for r in rows])

    def state_dict(self) -> dict:
        return self.selection.as_dict() if self.selection else {}

    def load_state_dict(self, state_dict: dict) -> None:
        # setup() ran first and installed the DA the run restored from the same checkpoint; a mismatch
        # would mean the loader and the record disagree, which must never pass silently.
        if self.selection is not None and state_dict.get("selected") not in (None, self.selection.selected):
            raise RuntimeError(f"checkpoint DA {state_dict.get('selected')!r} differs from the installed {self.selection.selected!r}")
