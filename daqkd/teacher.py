"""The full-precision teacher: use a given checkpoint, else a cached one, else train and cache it.

    python -m daqkd.teacher dataset=fashion_mnist model=resnet20   # train and cache a teacher alone
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from daqkd.io import CheckpointError, atomic_torch_save, load_weights

log = logging.getLogger(__name__)


class TeacherModule(L.LightningModule):
    """Plain FP training with CE, SGD with momentum and a per-step cosine schedule (METHOD.md §3)."""

    def __init__(self, model: nn.Module, num_classes: int, lr: float, momentum: float, weight_decay: float, nesterov: bool = True):
        super().__init__()
        self.model = model
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher training: loss is {loss.item()} at step {self.global_step}; lower teacher.lr")
        self.train_acc(logits.detach(), y.argmax(1) if y.ndim == 2 else y)
        self.log("teacher/loss", loss, prog_bar=True)
        self.log("teacher/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            self.model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, then restored) over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            y = y.argmax(1) if y.ndim == 2 else y
            correct += int((pred == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def cache_key(identity: Mapping[str, Any]) -> str:
    """Stable short hash of what determines a teacher (data set, split, model, recipe, seed)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class TeacherInfo:
    model: nn.Module
    ckpt: str
    test_acc: float
    source: str  # "given", "cache" or "trained"


def resolve_teacher(
    build_model: Callable[[], nn.Module],
    datamodule,
    identity: Mapping[str, Any],
    recipe: Mapping[str, Any],
    cache_dir: str | Path,
    ckpt: str | None = None,
    retrain: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> TeacherInfo:
    """The FP teacher for this run, in eval mode, with its test accuracy.

    Order: ``ckpt`` if given; else ``cache_dir/teachers/<dataset>_<model>_<hash>.pt`` keyed by
    ``identity``; else train with ``recipe`` (lr, momentum, weight_decay, nesterov, max_epochs) and
    write the cache atomically. A corrupt cache file is moved aside and the teacher retrained.
    """
    model = build_model()
    if ckpt:
        load_weights(model, ckpt)
        path, source = Path(ckpt).expanduser(), "given"
    else:
        key = cache_key({**identity, "recipe": dict(recipe)})
        path = Path(cache_dir).expanduser() / "teachers" / f"{identity['dataset']}_{identity['model']}_{key}.pt"
        source = "cache"
        if path.is_file() and not retrain:
            try:
                load_weights(model, path)
                log.info("teacher: cached %s", path)
            except CheckpointError as e:
                aside = path.with_suffix(".corrupt")
                path.replace(aside)
                log.warning("teacher cache %s unreadable (%s); moved to %s and retraining", path, e, aside)
                model = build_model()
                source = "trained"
        else:
            source = "trained"
        if source == "trained":
            train_teacher(model, datamodule, recipe, trainer_kwargs or {})
            atomic_torch_save({"state_dict": model.state_dict(), "identity": dict(identity), "recipe": dict(recipe)}, path)
            log.info("teacher: trained and cached at %s", path)
    datamodule.setup()
    acc = evaluate_accuracy(model, datamodule.test_dataloader())
    model.eval()
    return TeacherInfo(model=model, ckpt=str(path), test_acc=acc, source=source)


def train_teacher(model: nn.Module, datamodule, recipe: Mapping[str, Any], trainer_kwargs: Mapping[str, Any]) -> nn.Module:
    """Train ``model`` in full precision on the datamodule's training split with the minimal DA."""
    module = TeacherModule(
        model, datamodule.num_classes, lr=recipe["lr"], momentum=recipe.get("momentum", 0.9),
        weight_decay=recipe.get("weight_decay", 5e-4), nesterov=recipe.get("nesterov", True),
    )
    kw = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **trainer_kwargs}
    kw["max_epochs"] = recipe["max_epochs"]
    log.info("teacher: training for %d epochs", recipe["max_epochs"])
    L.Trainer(**kw).fit(module, train_dataloaders=datamodule.train_loader("minimal"))
    return model


def main() -> None:
    """``python -m daqkd.teacher [overrides]``: resolve (train and cache) the teacher alone."""
    import sys

    import hydra

    from daqkd import run
    from daqkd.config import config_dir, normalize_overrides

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def _main(cfg) -> float:
        L.seed_everything(cfg.seed, workers=True)
        dm = run.build_datamodule(cfg)
        info = run.build_teacher(cfg, dm)
        log.info("Teacher %s/%s (%s): %s, test accuracy %.4f", cfg.dataset.name, cfg.model.name, info.source, info.ckpt, info.test_acc)
        return info.test_acc

    sys.argv[1:] = normalize_overrides(sys.argv[1:]) + ["task_name=teacher"]
    _main()


if __name__ == "__main__":
    main()
