"""Builders: every object a run needs, made from the composed config, in one place.

The entry points (``run``, ``score``, ``train_teacher``, ``bench``) call these; nothing else reads
the config. Each builder takes the config and what it depends on, and returns a plain object.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import _get_rank
from omegaconf import DictConfig, OmegaConf

from daqkd.compile import AutoCompile, compile_key
from daqkd.data import ImageDataModule
from daqkd.errors import ConfigError, ExportError
from daqkd.io import AtomicCheckpointIO
from daqkd.kd import Distiller, feature_shapes
from daqkd.metric.scoring import Selection
from daqkd.metric.select import choose, restore, rule_from_config
from daqkd.models import default_feature_layers
from daqkd.module import QATKDModule
from daqkd.quant import calibrate, quant_layers, quantize_model
from daqkd.teacher import TeacherInfo, TeacherRecipe, cache_path, resolve_teacher

log = logging.getLogger("daqkd")


def build_device(cfg: DictConfig) -> torch.device:
    """Where work outside the Trainer runs (scoring in ``daqkd.score``): the GPU when the trainer may use one."""
    wants_gpu = cfg.trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    return instantiate(cfg.dataset.datamodule)


def build_model(cfg: DictConfig) -> nn.Module:
    """The architecture of ``model=`` sized for ``dataset=`` (classes, channels, image size)."""
    return instantiate(cfg.model.factory)(
        num_classes=cfg.dataset.num_classes, in_channels=cfg.dataset.in_channels, image_size=cfg.dataset.image_size
    )


def teacher_recipe(cfg: DictConfig) -> TeacherRecipe:
    t = cfg.teacher
    return TeacherRecipe(max_epochs=t.max_epochs, augment=t.augment, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov,
                         warmup_epochs=float(t.get("warmup_epochs") or 0.0))  # 1 and 1.0: one cache key


def teacher_identity(cfg: DictConfig, datamodule: ImageDataModule) -> dict[str, Any]:
    """Everything, besides the recipe, that shapes a trained teacher: the cache key. The data enter
    by content (a fingerprint of the images or of the file list, and of the training split), so a
    second folder of the same class count never gets the first one's teacher."""
    d = cfg.dataset.datamodule
    identity = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "num_classes": cfg.dataset.num_classes,
        "in_channels": cfg.dataset.in_channels,
        "image_size": cfg.dataset.image_size,
        "data": datamodule.fingerprint(),
        "mean": list(d.mean),
        "std": list(d.std),
        "padding": d.padding,
        "flip": d.flip,
        "batch_size": cfg.teacher.batch_size,
        "limit_train_batches": cfg.teacher.get("limit_train_batches"),
        "seed": cfg.seed,
    }
    params = cfg.augment.get("params") or {}
    teacher_params = {p: OmegaConf.to_container(params[p], resolve=True) for p in str(cfg.teacher.augment).split("+") if p in params}
    if teacher_params:  # the teacher's DA's own parameters (absent when none are set: earlier keys stay valid)
        identity["augment_params"] = teacher_params
    return identity


def build_teacher(cfg: DictConfig, datamodule: ImageDataModule, trainer_kwargs: dict[str, Any] | None = None) -> TeacherInfo:
    """The FP teacher: ``teacher.ckpt``, else the cache, else trained (and cached).

    Trained on one device even under ``trainer=ddp``: every rank of a DDP run gets here, the cache's
    file lock lets one train while the others wait and load its file (train a large teacher ahead with
    ``python -m daqkd.train_teacher``)."""
    kw = {
        "accelerator": cfg.trainer.get("accelerator", "auto"),
        "devices": 1,
        "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
        "limit_train_batches": cfg.teacher.get("limit_train_batches"),
        **(trainer_kwargs or {}),
    }
    return resolve_teacher(
        lambda: build_model(cfg), datamodule, teacher_identity(cfg, datamodule), teacher_recipe(cfg), cfg.paths.cache_dir,
        ckpt=cfg.teacher.ckpt, retrain=cfg.teacher.retrain, trainer_kwargs=kw, seed=cfg.seed, batch_size=cfg.teacher.batch_size,
    )


def teacher_cache_path(cfg: DictConfig, datamodule: ImageDataModule) -> Path:
    """Where this config's teacher is (or would be) cached."""
    return cache_path(cfg.paths.cache_dir, teacher_identity(cfg, datamodule), teacher_recipe(cfg))


def build_student(cfg: DictConfig, teacher: nn.Module, datamodule: ImageDataModule | None = None) -> nn.Module:
    """A copy of the teacher with its conv/linear layers quantized per ``quantizer=`` and ``bits=``;
    calibrated on one clean batch of ``datamodule`` when one is given (not when resuming)."""
    student = copy.deepcopy(teacher).train()
    q = cfg.quantizer
    weight = instantiate(q.weight) if q.weight is not None else None
    activation = instantiate(q.activation) if q.activation is not None else None
    if weight is None and activation is None:
        return student
    student = quantize_model(student, weight, activation, cfg.bits.w, cfg.bits.a, q.first_last, q.output_scale)
    if datamodule is not None:
        calibrate(student, datamodule.calibration_batch(q.calibration_size))
    return student


def build_distiller(cfg: DictConfig, student: nn.Module, teacher: nn.Module, datamodule: ImageDataModule | None) -> Distiller:
    """The objective of ``kd=``; a feature method is sized from the tapped layers' output shapes."""
    k = cfg.kd
    method, s_layers, t_layers = None, [], []
    if k.get("method") is not None:
        factory = instantiate(k.method)
        if getattr(factory.func, "uses_features", True):
            default = list(cfg.model.get("feature_layers") or default_feature_layers(cfg.model.name))
            s_layers, t_layers = list(k.student_layers or default), list(k.teacher_layers or default)
            x = datamodule.calibration_batch(2)
            method = factory(student_shapes=feature_shapes(student, s_layers, x), teacher_shapes=feature_shapes(teacher, t_layers, x))
        else:
            method = factory()
    return Distiller(student, teacher, k.gamma, k.alpha, k.beta, k.temperature, method, k.name, s_layers, t_layers)


def build_module(cfg: DictConfig, student: nn.Module, teacher: nn.Module, datamodule: ImageDataModule | None) -> QATKDModule:
    """The LightningModule: student, frozen teacher, the Distiller of ``kd=`` and the ``optim=`` recipe,
    with the ``speed.*`` switches (channels_last layout, torch.compile of both networks)."""
    speed = cfg.get("speed") or {}
    module = QATKDModule(
        student=student,
        teacher=teacher,
        distiller=build_distiller(cfg, student, teacher, datamodule),
        num_classes=cfg.dataset.num_classes,
        optimizer=instantiate(cfg.optim.optimizer),
        quant_lr=cfg.optim.quant_lr,
        scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        channels_last=bool(speed.get("channels_last", False)),
        deploy=cfg.quantizer.get("deploy", "none") or "none",
        freeze_bn_epoch=int(cfg.quantizer.get("freeze_bn_epoch", 0) or 0),
    )
    if module.deploy == "int8":
        if not any(True for _ in quant_layers(student)):
            raise ConfigError("quantizer.deploy=int8 needs a quantized student (quantizer=ewgs, lsq, pact or dorefa), not "
                              f"quantizer={cfg.quantizer.name}; drop quantizer.deploy=int8 or pick a quantizer")
        epochs, start = cfg.trainer.get("max_epochs"), module.freeze_bn_epoch
        if epochs is not None and epochs >= 0 and start >= epochs:
            raise ConfigError(f"quantizer.freeze_bn_epoch={start} is never reached in trainer.max_epochs={epochs}: the integer model would "
                              f"never be trained; set quantizer.freeze_bn_epoch to at most {max(epochs - 1, 0)}")
        devices = cfg.trainer.get("devices", 1)
        if build_device(cfg).type != "cpu" or devices not in (1, "1", None):
            raise ConfigError(f"quantizer.deploy=int8 trains on one CPU process for now (this run: {build_device(cfg).type}, "
                              f"trainer.devices={devices}); add trainer.accelerator=cpu trainer.devices=1")
        if datamodule is not None:
            _check_int8_form(student, datamodule)
    if speed.get("compile", False) is True and module.deploy == "int8":
        log.info("not compiled: with quantizer.deploy=int8 every forward freezes the student and runs its integer graph")
    elif speed.get("compile", False) is True:  # nn.Module.compile: in place, so state_dict keys stay as they are
        student.compile(backend=speed.get("compile_backend", "inductor"))
        teacher.compile(backend=speed.get("compile_backend", "inductor"))
    return module


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


def build_selection(cfg: DictConfig, datamodule: ImageDataModule, teacher: nn.Module, student: nn.Module,
                    resume_from: str | None) -> Selection | None:
    """The DA the student trains with (docs/METHOD.md §1, daqkd.metric.select): the checkpoint's when
    resuming; else the candidates are scored and the rule decides (``augment=auto``), or the fixed DA
    is taken (and scored, with ``metric.score_fixed``). Only rank 0 decides; the other ranks of a
    DDP run get None and DAMetricCallback broadcasts rank 0's decision to them."""
    aug, metric = cfg.augment, cfg.metric
    fixed = None if aug.name == "auto" else str(aug.name)
    if resume_from is not None:
        return restore(resume_from, fixed)
    if (_get_rank() or 0) != 0:
        return None
    candidates = list(aug.pool) if fixed is None else ([fixed] if metric.score_fixed else [])
    rule = rule_from_config(metric)
    epochs = cfg.trainer.get("max_epochs")
    scored_student = student if (metric.score_student or rule.needs_student(epochs)) else None
    return choose(candidates, fixed, datamodule, teacher, scored_student, build_device(cfg), rule, epochs, metric.num_samples,
                  metric.batch_size, metric.seed, str(cfg.paths.output_dir), chunk=metric.get("chunk"), stop_z=metric.get("stop_z", 3.0))


def _check_int8_form(student: nn.Module, datamodule: ImageDataModule) -> None:
    """quantizer.deploy=int8 needs a student the integer exporter can write (a CIFAR ResNet, ResNet-18
    or VGG with unsigned activation grids, ...): walked once on 4 images at build, so that a student it
    cannot write stops now with the exporter's reason, not at the epoch deploy takes over."""
    from daqkd.export.int8 import Int8Exporter
    from daqkd.quant.convert import freeze

    try:
        Int8Exporter(freeze(student)[0], datamodule.calibration_batch(4)).emit()
    except ExportError as e:
        raise ExportError(f"quantizer.deploy=int8 cannot train this student through an integer form ({e}); it needs a CIFAR ResNet, "
                          "ResNet-18 or VGG with quantizer.first_last=fp: change those, or drop quantizer.deploy=int8") from None


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """``callbacks.*`` (checkpointing), the quantizer's own callback (EWGS δ), if any, and
    ``speed.compile=auto``'s decision (daqkd.compile)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if cfg.quantizer.get("callback") is not None:
        callbacks.append(instantiate(cfg.quantizer.callback))
    speed = cfg.get("speed") or {}
    if speed.get("compile", False) == "auto" and cfg.quantizer.get("deploy", "none") != "int8":  # deploy=int8 forwards are not compilable
        callbacks.append(AutoCompile(compile_key(cfg, build_device(cfg).type), cfg.paths.cache_dir, speed.get("compile_backend", "inductor"),
                                     speed.get("compile_payback", 20)))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    """``logger.*``; a WandbLogger gets its group, tags, run id and mode from daqkd.wandb_setup."""
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is None:
            continue
        if str(c.get("_target_", "")).endswith("WandbLogger"):
            from daqkd.wandb_setup import logger_kwargs

            settings = OmegaConf.to_container(c, resolve=True)
            loggers.append(instantiate({"_target_": settings.pop("_target_")}, **logger_kwargs(settings, cfg.paths.output_dir)))
        else:
            loggers.append(instantiate(c))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: Sequence[L.Callback]) -> L.Trainer:
    """``trainer=`` with the given callbacks, the loggers and atomic checkpoint writes."""
    return instantiate(cfg.trainer, callbacks=list(callbacks), logger=build_loggers(cfg) or False, plugins=[AtomicCheckpointIO()])
