"""The keys a user sets, as typed dataclasses: one per structured config block, each key declared
once with its type (the annotation) and its allowed values (``allowed``). ``check(cfg)`` holds a
composed config to them, and ``daqkd.config.validate_config``, the one owner of config checks, calls
it before the rules that relate several keys. A new key is declared here, next to the block it
belongs to; its default stays in its YAML file (a test checks that every key declared here exists in
a composed config).

Registries feed the choices (``metric.selector`` lists the registered selectors), and checks that
belong to a package stay there (``bits.*`` is ``daqkd.quant.check_bits``). Checked elsewhere, by
what they name: the parameters of a ``_target_`` block beyond these (against the target's
signature, ``config.check_target_blocks``), DA names (the DA registry), ``ckpt_path`` (the file),
and lists of layer names (``kd.*_layers``, by the model's taps).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from daqkd.errors import ConfigError


def allowed(example: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: Callable[[], list] | None = None, check: Callable[[Any, str], None] | None = None,
            test: Callable[[Any], bool] | None = None, what: str | None = None) -> Any:
    """A key's allowed values beyond its type: bounds on a number (ge ≥, gt >, le ≤, lt <), choices
    from a registry (called when checked), or a package's own check (raises ValueError); ``test``
    and ``what`` describe a value the annotation cannot (a count or a fraction). ``example`` goes
    into the error message as key=example."""
    return dataclasses.field(default=None, metadata={"example": example, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
                                                     "check": check, "test": test, "what": what})


def _selectors(*extra: str) -> Callable[[], list]:
    def names() -> list:
        from daqkd.registry import list_selectors

        return [*extra, *list_selectors()]
    return names


def _ties() -> list:
    from daqkd.metric.select import TIES

    return list(TIES)


def _bits(value, key: str) -> None:
    from daqkd.quant import check_bits

    check_bits(value, key)


def _first_last(value, key: str) -> None:
    from daqkd.quant import check_first_last

    check_first_last(value)


def _count_or_fraction(v) -> bool:
    return (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v < 1)


def _batches(v) -> bool:
    return v is None or (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


BATCHES = "null, a batch count ≥ 1 or a fraction in (0, 1]"


@dataclass
class Top:
    seed: int = allowed(0)


@dataclass
class Dataset:
    num_classes: int = allowed(10, ge=2)
    in_channels: Literal[1, 3] = allowed(1)
    image_size: int = allowed(32, ge=8)


@dataclass
class DataModule:
    batch_size: int = allowed(128, ge=1)
    eval_batch_size: int = allowed(500, ge=1)
    num_workers: int = allowed(2, ge=0)
    padding: int = allowed(4, ge=0)
    val_size: float = allowed(0.1, test=_count_or_fraction, what="an image count ≥ 1 or a fraction in (0, 1)")
    train_subset: int | None = allowed(5000, ge=1)
    test_subset: int | None = allowed(1000, ge=1)
    flip: bool = allowed("true")
    seed: int = allowed(0)
    split_seed: int = allowed(0)
    download: bool = allowed("false")


@dataclass
class Teacher:
    batch_size: int = allowed(128, ge=2)
    max_epochs: int = allowed(4, ge=1)
    lr: float = allowed(0.1, gt=0)
    momentum: float = allowed(0.9, ge=0, lt=1)
    weight_decay: float = allowed("5e-4", ge=0)
    limit_train_batches: float | None = allowed(0.5, test=_batches, what=BATCHES)
    nesterov: bool = allowed("true")
    warmup_epochs: float = allowed(0.5, ge=0)
    retrain: bool = allowed("true")
    ckpt: str | None = allowed("/data/teacher.pt")


@dataclass
class Optimizer:
    lr: float = allowed("1e-3", gt=0)
    weight_decay: float = allowed("1e-4", ge=0)


@dataclass
class Optim:
    quant_lr: float = allowed("1e-5", ge=0)


@dataclass
class Trainer:
    max_epochs: int = allowed(2, ge=1)
    limit_train_batches: float | None = allowed(0.5, test=_batches, what=BATCHES)
    limit_val_batches: float | None = allowed(10, test=_batches, what=BATCHES)
    limit_test_batches: float | None = allowed(10, test=_batches, what=BATCHES)


@dataclass
class Metric:
    selector: str = allowed("auto", choices=_selectors("auto"))
    short: str = allowed("ce_cmi", choices=_selectors())
    long: str = allowed("m", choices=_selectors())
    tie: str = allowed("milder", choices=_ties)
    batch_size: int = allowed(250, ge=1)
    num_samples: int | None = allowed(2000)
    long_epochs: int | None = allowed(40, ge=1)
    tie_z: float = allowed(1.0, ge=0)
    chunk: int | None = allowed(250, ge=10)
    stop_z: float = allowed(3.0, ge=0)
    seed: int = allowed(0)
    score_student: bool = allowed("false")
    score_fixed: bool = allowed("false")


@dataclass
class Speed:
    compile: Union[bool, Literal["auto"]] = allowed("auto")
    threads: Union[Literal["auto"], int] = allowed(2, ge=1)
    compile_payback: float = allowed(20, gt=0)
    channels_last: bool = allowed("true")
    compile_backend: str = allowed("inductor")


@dataclass
class Bits:
    w: int = allowed(4, check=_bits)
    a: int = allowed(4, check=_bits)


def _deploy(value, key: str) -> None:
    from daqkd.export.deployed import check_deploy

    check_deploy(value)


@dataclass
class Quantizer:
    first_last: str = allowed("fp", check=_first_last)
    calibration_size: int = allowed(256, ge=1)
    output_scale: bool = allowed("true")
    deploy: str = allowed("int8", check=_deploy)
    freeze_bn_epoch: int = allowed(0, ge=0)


@dataclass
class WeightQuantizer:
    delta: float = allowed("1e-3", ge=0)


@dataclass
class DeltaCallback:
    num_batches: int = allowed(3, ge=1)
    probes: int = allowed(2, ge=1)
    every_n_epochs: int = allowed(10, ge=1)
    max_time_fraction: float = allowed(0.05, gt=0, le=1)


@dataclass
class KD:
    gamma: float = allowed(1.0, ge=0)
    alpha: float = allowed(2.0, ge=0)
    beta: float = allowed(0, ge=0)
    temperature: float = allowed(4.0, gt=0)


# Where each block sits in the config ("" is the top level).
BLOCKS: dict[str, type] = {
    "": Top, "dataset": Dataset, "dataset.datamodule": DataModule, "teacher": Teacher, "optim": Optim,
    "optim.optimizer": Optimizer, "trainer": Trainer, "metric": Metric, "speed": Speed, "bits": Bits, "quantizer": Quantizer,
    "quantizer.weight": WeightQuantizer, "quantizer.callback": DeltaCallback, "kd": KD,
}


def declared() -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """Every declared key: (dotted key, its type, its field)."""
    for path, block in BLOCKS.items():
        hints = typing.get_type_hints(block)
        for f in dataclasses.fields(block):
            yield (f"{path}.{f.name}" if path else f.name), hints[f.name], f


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _members(tp) -> list:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    if typing.get_origin(tp) is Literal:
        return [("literal", v) for v in typing.get_args(tp)]
    return [("null", None)] if tp is type(None) else [("type", tp)]


def _bounds(meta: dict) -> str:
    lo = ("≥", meta["ge"]) if meta["ge"] is not None else (">", meta["gt"]) if meta["gt"] is not None else None
    hi = ("≤", meta["le"]) if meta["le"] is not None else ("<", meta["lt"]) if meta["lt"] is not None else None
    if lo and hi:
        return f" in {'[' if lo[0] == '≥' else '('}{lo[1]:g}, {hi[1]:g}{']' if hi[0] == '≤' else ')'}"
    bound = lo or hi
    return f" {bound[0]} {bound[1]:g}" if bound else ""


def _literal(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def describe(tp, meta: dict) -> str:
    """What a key allows, in words: "an integer ≥ 1", "null or a number in [0, 1)", "true, false or auto"."""
    if meta["what"]:
        return meta["what"]
    members = _members(tp)
    words = ["null"] if ("null", None) in members else []
    for kind, t in members:
        if kind == "literal":
            words.append(_literal(t))
        elif kind == "type" and t is bool:
            words += ["true", "false"]
        elif kind == "type" and t is int:
            words.append("an integer" + _bounds(meta))
        elif kind == "type" and t is float:
            words.append("a number" + _bounds(meta))
        elif kind == "type" and t is str:
            words.append("a string")
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _in_bounds(v, meta: dict) -> bool:
    return ((meta["ge"] is None or v >= meta["ge"]) and (meta["gt"] is None or v > meta["gt"])
            and (meta["le"] is None or v <= meta["le"]) and (meta["lt"] is None or v < meta["lt"]))


def _fits(v, tp, meta: dict) -> bool:
    if meta["test"] is not None:
        return meta["test"](v)
    for kind, t in _members(tp):
        if kind == "null" and v is None or kind == "literal" and v == t and type(v) is type(t):
            return True
        if kind == "type" and (t is bool and isinstance(v, bool) or t is str and isinstance(v, str)
                               or t is int and _is_int(v) and _in_bounds(v, meta) or t is float and _is_num(v) and _in_bounds(v, meta)):
            return True
    return False


_ABSENT = object()


def check(cfg: DictConfig) -> None:
    """A ConfigError naming the first declared key whose value its declaration does not allow, with
    what is allowed and an example. Keys a config does not have (another quantizer's) are skipped."""
    for key, tp, f in declared():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        meta = f.metadata
        if meta["check"] is not None:
            try:
                meta["check"](value, key)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif meta["choices"] is not None:
            options = meta["choices"]()
            if value not in options:
                raise ConfigError(f"{key}={value} is not allowed; choose one of {', '.join(map(str, options))}, e.g. {key}={options[0]}")
        elif not _fits(value, tp, meta):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {describe(tp, meta)}, e.g. {key}={meta['example']}")


# Keys added after runs were recorded, with the value that means what their absence meant: a run
# whose config lacks one and a run that sets it to this value are the same setting (the report) and
# the same config (a sweep's relaunch). Add a key here when adding one whose default keeps the old
# behaviour.
LATER_KEYS: dict[str, Any] = {"teacher.warmup_epochs": 0, "quantizer.deploy": "none", "quantizer.freeze_bn_epoch": 0}


def without_later_defaults(config: dict) -> dict:
    """A nested config dict without the LATER_KEYS that hold their neutral value (a copy)."""
    import copy

    out = copy.deepcopy(config)
    for dotted, neutral in LATER_KEYS.items():
        *path, leaf = dotted.split(".")
        nodes = [out]
        for part in path:
            nodes.append(nodes[-1].get(part) if isinstance(nodes[-1], dict) else None)
        if isinstance(nodes[-1], dict) and leaf in nodes[-1] and nodes[-1][leaf] == neutral:
            del nodes[-1][leaf]
            for parent, part, node in reversed(list(zip(nodes, path, nodes[1:]))):
                if node:
                    break
                del parent[part]  # a block the key alone made: as if it had never been written
    return out
