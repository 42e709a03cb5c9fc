"""DAMetricCallback: score candidate DAs with the teacher before fitting and install the best."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from daqkd.metric.scoring import AugmentScore, format_ranking, score_augmentation

log = logging.getLogger(__name__)

SCORE_FIELDS = ["name", "m", "dev", "cmi", "teacher_acc", "teacher_ce", "num_samples", "seconds"]


class DAMetricCallback(L.Callback):
    """At ``on_fit_start``: score every candidate with M = DEV − CMI (METHOD.md §1) using
    ``pl_module.teacher``, log a ranking, pick argmin M (or keep ``fixed``, when given) and call
    ``trainer.datamodule.set_train_augment``. The choice and the scores are saved in checkpoints,
    so a resumed run trains with the same DA without scoring again.
    """

    def __init__(
        self,
        candidates: Sequence[str],
        num_samples: int | None = 2000,
        batch_size: int = 500,
        seed: int = 0,
        fixed: str | None = None,
        output_dir: str | None = None,
    ):
        if not candidates:
            raise ValueError("DAMetricCallback needs at least one candidate augmentation")
        if fixed is not None and fixed not in candidates:
            candidates = [*candidates, fixed]
        self.candidates = list(dict.fromkeys(candidates))
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.fixed, self.output_dir = fixed, output_dir
        self.scores: list[AugmentScore] = []
        self.selected: str | None = None

    def score_all(self, teacher, datamodule, num_classes: int, device) -> list[AugmentScore]:
        scores = []
        for i, name in enumerate(self.candidates):
            # Each candidate's draws depend only on (seed, its position), not on what ran before.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + i)
                loader = datamodule.augment_loader(name, self.num_samples, self.batch_size, self.seed + i)
                s = score_augmentation(name, teacher, loader, num_classes, device)
            log.info("DA metric: %-22s M=%.4f (DEV=%.4f, CMI=%.4f) in %.1fs", name, s.m, s.dev, s.cmi, s.seconds)
            scores.append(s)
        return scores

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if self.selected is None:
            self.scores = self.score_all(pl_module.teacher, dm, dm.num_classes, pl_module.device)
            self.selected = self.fixed or min(self.scores, key=lambda s: s.m).name
            self._report(trainer)
        else:
            log.info("DA metric: restored from checkpoint, training with %s", self.selected)
        dm.set_train_augment(self.selected)

    def _report(self, trainer: L.Trainer) -> None:
        table = format_ranking(self.scores, self.selected)
        how = "fixed by config" if self.fixed else "argmin M"
        log.info("DA ranking (lower M is better; %s):\n%s", how, table)
        rows = [s.as_dict() for s in sorted(self.scores, key=lambda s: s.m)]
        if self.output_dir:
            path = Path(self.output_dir) / "augment_scores.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=SCORE_FIELDS)
                writer.writeheader()
                writer.writerows({k: r[k] for k in SCORE_FIELDS} for r in rows)
        for logger in trainer.loggers:
            metrics = {f"augment/{r['name']}/{k}": r[k] for r in rows for k in ("m", "dev", "cmi", "teacher_acc")}
            logger.log_metrics(metrics, step=0)
            if isinstance(logger, WandbLogger):
                logger.log_table("augment_scores", columns=SCORE_FIELDS, data=[[r[k] for k in SCORE_FIELDS] for r in rows])

    def state_dict(self) -> dict:
        return {"selected": self.selected, "scores": [s.as_dict() for s in self.scores]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.selected = state_dict.get("selected")
        self.scores = [AugmentScore(**s) for s in state_dict.get("scores", [])]
