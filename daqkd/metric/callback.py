"""DAMetricCallback: decide the training DA before Lightning builds any loader, and install it.

Lightning builds the training loader while it sets up the strategy (to count the steps for the
schedule), before any ``on_fit_start``. The callback therefore decides in ``setup``, which runs
first, and it is the one place that installs the training DA (``datamodule.set_train_augment``).
"""
from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from daqkd.io import read_checkpoint
from daqkd.metric.scoring import SELECTORS, AugmentScore, Selection, format_ranking, score_augmentations, select_augmentation

log = logging.getLogger(__name__)

SCORE_FIELDS = [f.name for f in fields(AugmentScore)]


class DAMetricCallback(L.Callback):
    """Decides the training DA in ``setup("fit")`` and installs it in the datamodule:

    - resuming (``resume_from`` is the checkpoint): the DA saved in it, without scoring again;
    - otherwise every candidate is scored with the teacher (M = DEV − CMI, docs/METHOD.md §1, and the
      baseline selectors, from the same passes) and, with ``score_student``, with the calibrated student (``student_m``), the
      ranking is logged, and the DA is ``fixed`` when given, else the argmin of ``selector``.

    ``candidates`` may be empty with a ``fixed`` DA (nothing is scored). Under several processes
    only rank 0 scores, and its decision is broadcast, so every rank trains with the same DA.
    """

    def __init__(
        self,
        candidates: Sequence[str],
        fixed: str | None = None,
        num_samples: int | None = 2000,
        batch_size: int = 500,
        seed: int = 0,
        selector: str = "m",
        output_dir: str | None = None,
        resume_from: str | None = None,
        score_student: bool = False,
    ):
        if not candidates and fixed is None:
            raise ValueError("DAMetricCallback needs candidates to score or a fixed DA")
        if selector not in SELECTORS:
            raise ValueError(f"metric.selector={selector!r} is not a selector; choose one of {', '.join(SELECTORS)}")
        self.selector = selector
        self.score_student = score_student or selector == "student_m"
        self.candidates = list(dict.fromkeys(candidates))
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.fixed, self.output_dir, self.resume_from = fixed, output_dir, resume_from
        self.selection: Selection | None = None
        self.seconds = 0.0  # spent deciding (scoring), reported apart from the fit

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.selection is None:
            start = time.perf_counter()
            self.selection = self._restore() if self.resume_from else self._decide(trainer, pl_module)
            self.seconds = time.perf_counter() - start
        trainer.datamodule.set_train_augment(self.selection.selected)

    def _decide(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Selection:
        selection = None
        if trainer.is_global_zero:
            dm = trainer.datamodule
            device = trainer.strategy.root_device
            scores = []
            if self.candidates:
                teacher = pl_module.teacher.to(device)
                student = pl_module.student.to(device) if self.score_student else None
                scores = score_augmentations(teacher, dm, self.candidates, self.num_samples, self.batch_size, self.seed, device, student)
            if self.fixed is not None:
                selection = Selection(self.fixed, "fixed", scores)
            else:
                selection = Selection(select_augmentation(scores, self.selector), f"argmin {self.selector}", scores)
            self._report(trainer, selection)
        return trainer.strategy.broadcast(selection, src=0)

    def recover(self, checkpoint_path: str) -> Selection:
        """The selection made in other processes (``ddp_spawn`` decides in its workers, so the launching
        process's callback never ran ``setup``), read back from the checkpoint the fit wrote."""
        self.resume_from = checkpoint_path
        self.selection = self._restore()
        return self.selection

    def _restore(self) -> Selection:
        checkpoint = read_checkpoint(self.resume_from)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or not state.get("selected"):
            raise RuntimeError(
                f"{self.resume_from} holds no DA selection ({self.state_key}); it was not written by this "
                "version of daqkd. Start the run afresh (ckpt_path=null)."
            )
        selection = Selection.from_dict(state)
        if self.fixed is not None and selection.selected != self.fixed:
            raise RuntimeError(
                f"{self.resume_from} trained with augment={selection.selected}, but this run asks for "
                f"augment={self.fixed}; a resumed run keeps its DA. Resume with augment={selection.selected}, "
                "or start afresh in a new folder."
            )
        log.info("DA: restored from %s, training with %s (%s)", self.resume_from, selection.selected, selection.how)
        return selection

    def _report(self, trainer: L.Trainer, selection: Selection) -> None:
        if selection.scores:
            log.info("DA ranking:\n%s", format_ranking(selection.scores, selection.selected, self.selector))
        log.info("DA: training with %s (%s)", selection.selected, selection.how)
        rows = [s.as_dict() for s in sorted(selection.scores, key=lambda s: s.m)]
        if self.output_dir and rows:
            path = Path(self.output_dir) / "augment_scores.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=SCORE_FIELDS)
                writer.writeheader()
                writer.writerows({k: r[k] for k in SCORE_FIELDS} for r in rows)
        for logger in trainer.loggers:
            if rows:
                metrics = {f"augment/{r['name']}/{k}": r[k] for r in rows for k in (*SELECTORS, "dev", "cmi")}
                logger.log_metrics(metrics, step=0)
            if isinstance(logger, WandbLogger) and rows:
                logger.log_table("augment_scores", columns=SCORE_FIELDS, data=[[r[k] for k in SCORE_FIELDS] for r in rows])

    def state_dict(self) -> dict:
        return self.selection.as_dict() if self.selection else {}

    def load_state_dict(self, state_dict: dict) -> None:
        # setup() ran first and installed the DA from the same checkpoint; a mismatch would mean
        # the loader and the record disagree, which must never pass silently.
        if self.selection is not None and state_dict.get("selected") not in (None, self.selection.selected):
            raise RuntimeError(
                f"checkpoint DA {state_dict.get('selected')!r} differs from the installed {self.selection.selected!r}"
            )
