"""The full-precision teacher: use a given checkpoint, else a cached one, else train and cache it.

A library: the command that trains a teacher alone is ``python -m daqkd.train_teacher``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torchmetrics.classification import MulticlassAccuracy

from daqkd.errors import CheckpointError, ConfigError, TrainingDiverged
from daqkd.io import atomic_torch_save, load_weights, read_checkpoint
from daqkd.torchutil import eval_mode, hard_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherRecipe:
    """FP training: SGD with momentum, a per-step cosine schedule, CE (docs/METHOD.md §5).
    The values come from conf/teacher/ (tuned per data set in conf/dataset/); there are no defaults here."""

    max_epochs: int
    augment: str  # the training DA, through the same AugmentPipeline as the student's
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    warmup_epochs: float = 0.0  # a linear warm-up of the lr over this many epochs before the cosine (0: none)


class TeacherModule(L.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, recipe: TeacherRecipe):
        super().__init__()
        self.model, self.recipe = model, recipe
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"teacher training: the loss is {loss.item()} at step {self.global_step}; lower teacher.lr")
        self.train_acc(logits.detach(), hard_labels(y))
        self.log("teacher/loss", loss, prog_bar=True)
        self.log("teacher/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        r = self.recipe
        opt = torch.optim.SGD(self.model.parameters(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(1, round(r.warmup_epochs * total / max(r.max_epochs, 1))) if r.warmup_epochs > 0 else 0
        if warmup <= 0:  # the recipe every cached teacher was trained with, unchanged
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(warmup_cosine, warmup=min(warmup, total - 1), total=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The lr factor at ``step``: linear from 1/warmup to 1 over the first ``warmup`` steps, then a
    cosine from 1 to 0 over the rest (He et al. 2016 warm ResNet-110 up at a tenth of the lr for
    about 400 steps; a linear ramp is the usual form since Goyal et al. 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (in eval mode, then restored) over ``loader``."""
    correct = total = 0
    with eval_mode(model):
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            y = hard_labels(y)
            correct += int((pred == y).sum())
            total += len(y)
    return correct / max(total, 1)


def cache_key(identity: Mapping[str, Any]) -> str:
    """Stable short hash of what determines a teacher (data set, split, model, recipe, seed)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(cache_dir: str | Path, identity: Mapping[str, Any], recipe: TeacherRecipe) -> Path:
    """Where the teacher of this identity and recipe is cached."""
    recipe_key = asdict(recipe)
    if recipe_key["augment"] == "minimal":  # keys written before teacher.augment existed stay valid
        del recipe_key["augment"]
    if not recipe_key["warmup_epochs"]:  # and those written before teacher.warmup_epochs existed
        del recipe_key["warmup_epochs"]
    key = cache_key({**identity, "recipe": recipe_key})
    return Path(cache_dir).expanduser() / "teachers" / f"{identity['dataset']}_{identity['model']}_{key}.pt"


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
    recipe: TeacherRecipe,
    cache_dir: str | Path,
    ckpt: str | None = None,
    retrain: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> TeacherInfo:
    """The FP teacher for this run, in eval mode, with its test accuracy.

    Order: ``ckpt`` if given; else ``cache_dir/teachers/<dataset>_<model>_<hash>.pt`` keyed by
    ``identity`` and ``recipe``; else train with ``recipe`` and write the cache atomically. Jobs that
    start together take a file lock, so a teacher is trained once and nobody reads half a file. A
    corrupt cache file is moved aside and the teacher retrained. The cache also keeps the teacher's
    test accuracy per test split, so it is measured once.

    A trained teacher is a function of its identity: it is initialised and trained from ``seed``
    (part of the identity) whatever the caller's (CPU) random state, which is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        return _resolve(build_model, datamodule, identity, recipe, cache_dir, ckpt, retrain, trainer_kwargs, seed, batch_size)


def _resolve(build_model, datamodule, identity, recipe, cache_dir, ckpt, retrain, trainer_kwargs, seed, batch_size) -> TeacherInfo:
    datamodule.setup()
    test_key = datamodule.test_fingerprint()
    if ckpt:
        model = build_model()
        load_weights(model, ckpt)
        model.eval()
        return TeacherInfo(model, str(Path(ckpt).expanduser()), evaluate_accuracy(model, datamodule.test_dataloader()), "given")
    path = cache_path(cache_dir, identity, recipe)
    problem = _unwritable(path.parent)
    if problem:
        if path.is_file() and not retrain:  # a read-only cache (a team's, say) that holds this teacher
            return _read_only(path, build_model, datamodule, test_key)
        raise ConfigError(f"paths.cache_dir={cache_dir} cannot be written ({problem}) and holds no teacher for this config; "
                          "set paths.cache_dir= (or DAQKD_CACHE) to a folder you can write to")
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("teacher: waiting for the teacher being trained by another process (lock file %s.lock)", path)
        lock.acquire()
    try:
        cached, source = None, "trained"
        if path.is_file() and not retrain:
            try:
                cached = read_checkpoint(path)
                model = build_model()
                load_weights(model, path, cached)
                source = "cache"
                log.info("teacher: cached %s", path)
            except CheckpointError as e:
                aside = path.with_suffix(".corrupt")
                path.replace(aside)
                log.warning("teacher cache %s unreadable (%s); moved to %s and retraining", path, e, aside)
                cached = None
        if source == "trained":  # built and trained from the seed: the same identity, the same weights
            torch.random.default_generator.manual_seed(seed)
            model = build_model()
            train_teacher(model, datamodule, recipe, trainer_kwargs or {}, batch_size)
        accuracies = dict((cached or {}).get("test_acc", {}))
        if test_key not in accuracies:
            accuracies[test_key] = evaluate_accuracy(model, datamodule.test_dataloader())
        if source == "trained" or accuracies != (cached or {}).get("test_acc"):
            atomic_torch_save({"state_dict": model.state_dict(), "identity": dict(identity), "recipe": asdict(recipe),
                               "test_acc": accuracies}, path)
            if source == "trained":
                log.info("teacher: trained and cached at %s", path)
    finally:
        lock.release()
    model.eval()
    return TeacherInfo(model=model, ckpt=str(path), test_acc=accuracies[test_key], source=source)


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot take a new file (the lock, the teacher), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _read_only(path: Path, build_model, datamodule, test_key: str) -> TeacherInfo:
    """The cached teacher from a cache this process cannot write: read without the lock (cache files
    are replaced atomically, so a reader never sees half of one), its test accuracy measured if the
    file does not hold it for this test split."""
    cached = read_checkpoint(path)
    model = build_model()
    load_weights(model, path, cached)
    model.eval()
    acc = dict(cached.get("test_acc", {})).get(test_key)
    if acc is None:
        acc = evaluate_accuracy(model, datamodule.test_dataloader())
    log.info("teacher: cached %s (read-only cache)", path)
    return TeacherInfo(model=model, ckpt=str(path), test_acc=acc, source="cache")


def train_teacher(model: nn.Module, datamodule, recipe: TeacherRecipe, trainer_kwargs: Mapping[str, Any],
                  batch_size: int | None = None) -> nn.Module:
    """Train ``model`` in full precision on the datamodule's training split with the recipe's DA, at
    ``batch_size`` (default: the datamodule's)."""
    module = TeacherModule(model, datamodule.num_classes, recipe)
    kw = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **trainer_kwargs}
    kw["max_epochs"] = recipe.max_epochs
    log.info("teacher: training for %d epochs with DA %s", recipe.max_epochs, recipe.augment)
    L.Trainer(**kw).fit(module, train_dataloaders=datamodule.train_loader(recipe.augment, batch_size))
    return model
