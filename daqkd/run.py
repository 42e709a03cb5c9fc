"""Entry point: ``python -m daqkd.run [group=option ...] [key=value ...]``.

config → datamodule and teacher → DA metric picks the DA → student built from the teacher →
QAT+KD fit → test → results.json (METHOD.md; README for the commands).
"""
from __future__ import annotations

import copy
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from daqkd.config import config_dir, normalize_overrides, validate_config
from daqkd.io import AtomicCheckpointIO, atomic_write_json
from daqkd.kd import DistillationLoss, feature_shapes
from daqkd.metric.callback import DAMetricCallback
from daqkd.models import default_feature_layers
from daqkd.module import QATKDModule
from daqkd.quant import calibrate, quantize_model, summary
from daqkd.teacher import TeacherInfo, resolve_teacher

log = logging.getLogger("daqkd")

# The frozen teacher is kept in eval mode on purpose (QATKDModule.train); Lightning warns about it.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def build_datamodule(cfg: DictConfig):
    return instantiate(cfg.dataset.datamodule)


def build_model(cfg: DictConfig) -> torch.nn.Module:
    return instantiate(cfg.model.factory)(
        num_classes=cfg.dataset.num_classes, in_channels=cfg.dataset.in_channels, image_size=cfg.dataset.image_size
    )


def build_teacher(cfg: DictConfig, datamodule, trainer_kwargs: dict[str, Any] | None = None) -> TeacherInfo:
    t = cfg.teacher
    identity = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "train_subset": cfg.dataset.datamodule.get("train_subset"),
        "val_size": cfg.dataset.datamodule.val_size,
        "seed": cfg.seed,
    }
    recipe = {k: t[k] for k in ("max_epochs", "lr", "momentum", "weight_decay", "nesterov")}
    kw = {
        "accelerator": cfg.trainer.get("accelerator", "auto"),
        "devices": cfg.trainer.get("devices", "auto"),
        "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
        "limit_train_batches": t.get("limit_train_batches"),
        **(trainer_kwargs or {}),
    }
    return resolve_teacher(
        lambda: build_model(cfg), datamodule, identity, recipe, cfg.paths.cache_dir,
        ckpt=t.ckpt, retrain=t.retrain, trainer_kwargs=kw,
    )


def build_student(cfg: DictConfig, teacher: torch.nn.Module) -> torch.nn.Module:
    """Same architecture, initialised from the teacher, conv/linear layers quantized per config."""
    student = copy.deepcopy(teacher).train()
    q = cfg.quantizer
    weight = instantiate(q.weight) if q.weight is not None else None
    activation = instantiate(q.activation) if q.activation is not None else None
    if weight is None and activation is None:
        return student
    return quantize_model(student, weight, activation, cfg.bits.w, cfg.bits.a, q.first_last, q.output_scale)


def build_kd(cfg: DictConfig, student: torch.nn.Module, teacher: torch.nn.Module, datamodule):
    """(logit objective, feature/logit KD module or None, student taps, teacher taps)."""
    k = cfg.kd
    loss = DistillationLoss(gamma=k.gamma, alpha=k.alpha, beta=k.beta, temperature=k.temperature, name=k.name)
    if k.get("feature") is None:
        return loss, None, [], []
    default = list(cfg.model.get("feature_layers") or default_feature_layers(cfg.model.name))
    s_layers = list(k.student_layers or default)
    t_layers = list(k.teacher_layers or default)
    x = datamodule.calibration_batch(2)
    feature = instantiate(k.feature)(
        student_shapes=feature_shapes(student, s_layers, x), teacher_shapes=feature_shapes(teacher, t_layers, x)
    )
    return loss, feature, s_layers, t_layers


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a file, or "last" (this run folder's last.ckpt; none yet means a fresh start,
    so a requeued job can always pass ckpt_path=last)."""
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path != "last":
        return str(cfg.ckpt_path)
    last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
    if not last.is_file():
        log.warning("ckpt_path=last: no %s yet, starting afresh", last)
        return None
    return str(last)


def build_selection(cfg: DictConfig, output_dir: str, resume_from: str | None) -> DAMetricCallback:
    """The callback that decides and installs the training DA (see daqkd.metric.callback)."""
    aug, metric = cfg.augment, cfg.metric
    auto = aug.name == "auto"
    candidates = list(aug.pool) if auto else ([aug.name] if metric.score_fixed else [])
    return DAMetricCallback(
        candidates,
        fixed=None if auto else aug.name,
        num_samples=metric.num_samples,
        batch_size=metric.batch_size,
        seed=metric.seed,
        output_dir=output_dir,
        resume_from=resume_from,
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if cfg.quantizer.get("callback") is not None:
        callbacks.append(instantiate(cfg.quantizer.callback))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Run the whole pipeline for one config; returns what it writes to results.json.

    ``extra_callbacks`` are added to the Trainer's (for instrumenting a run from Python)."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    datamodule.setup()
    teacher = build_teacher(cfg, datamodule)
    log.info("Teacher (%s, %s): test accuracy %.4f", teacher.source, teacher.ckpt, teacher.test_acc)

    L.seed_everything(cfg.seed, workers=True)
    student = build_student(cfg, teacher.model)
    resume_from = resolve_ckpt_path(cfg)
    if resume_from is None:
        calibrate(student, datamodule.calibration_batch(cfg.quantizer.calibration_size))
    loss, feature_loss, s_layers, t_layers = build_kd(cfg, student, teacher.model, datamodule)
    module = QATKDModule(
        student=student,
        teacher=teacher.model,
        loss=loss,
        num_classes=cfg.dataset.num_classes,
        optimizer=instantiate(cfg.optim.optimizer),
        quant_lr=cfg.optim.quant_lr,
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        feature_loss=feature_loss,
        student_layers=s_layers,
        teacher_layers=t_layers,
    )
    selection = build_selection(cfg, str(output_dir), resume_from)
    callbacks = [selection, *build_callbacks(cfg), *extra_callbacks]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg) or False, plugins=[AtomicCheckpointIO()])

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]

    (output_dir / "quant_summary.txt").write_text(summary(module.student) + "\n")
    results = {
        "selected_augment": selection.selection.selected,
        "augment_scores": [s.as_dict() for s in selection.selection.scores],
        "teacher": {"ckpt": teacher.ckpt, "test_acc": teacher.test_acc, "source": teacher.source},
        "student": {
            "test_acc": float(test_metrics["test/acc"]),
            "test_loss": float(test_metrics["test/loss"]),
            "ckpt": best,
            "quantizer": cfg.quantizer.name,
            "bits_w": cfg.bits.w,
            "bits_a": cfg.bits.a,
            "kd": cfg.kd.name,
            "epochs": trainer.current_epoch,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(output_dir / "results.json", results)
    log.info(
        "Done. DA: %s | teacher test acc %.4f | W%dA%d %s student test acc %.4f | %s",
        results["selected_augment"], teacher.test_acc, cfg.bits.w, cfg.bits.a, cfg.quantizer.name,
        results["student"]["test_acc"], output_dir / "results.json",
    )
    return results


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    results = train(cfg)
    return results["student"]["test_acc"]  # the sweep objective


def main() -> None:
    sys.argv[1:] = normalize_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
