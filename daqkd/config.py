"""Where the configs live, and the checks that reject a bad config before any work starts."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from daqkd import schema
from daqkd.augment import build_augmentation
from daqkd.augment.registry import PAPER_POOL, REFERENCE_POOL
from daqkd.errors import ConfigError, check_keys, nearest
from daqkd.registry import AUGMENTS, list_augments, list_models


def _pool(name: str) -> ListConfig:
    """``${daqkd.pool:paper}``: a pool of candidate DAs, from the one list in daqkd/augment/registry.py
    (a ListConfig, which OmegaConf can store when a config is resolved: ``--cfg job --resolve``)."""
    pools = {"paper": PAPER_POOL, "reference16": REFERENCE_POOL}
    if name not in pools:
        raise ConfigError(f"unknown pool {name!r}; available: {', '.join(pools)}")
    return ListConfig(list(pools[name]))


def _sweep(*parts) -> str:
    """``${daqkd.sweep:${augment.pool},auto}``: lists and names joined into a sweeper's comma list."""
    out: list[str] = []
    for p in parts:
        out += [str(v) for v in p] if isinstance(p, (list, ListConfig)) else [str(p)]
    return ",".join(out)


def _interval(epochs, times) -> int:
    """``${daqkd.interval:${trainer.max_epochs},16}``: the epochs between ``times`` evenly spaced
    validations of a run of ``epochs`` (at least 1; the last epoch is one of them when ``times``
    divides ``epochs``)."""
    try:
        epochs, times = int(epochs), int(times)
    except (TypeError, ValueError):
        raise ConfigError(f"daqkd.interval needs two whole numbers, got {epochs!r} and {times!r}") from None
    if times < 1:
        raise ConfigError(f"daqkd.interval: the number of validations must be at least 1, got {times}")
    return max(1, epochs // times)


OmegaConf.register_new_resolver("daqkd.pool", _pool, replace=True)
OmegaConf.register_new_resolver("daqkd.interval", _interval, replace=True)
OmegaConf.register_new_resolver("daqkd.sweep", _sweep, replace=True)


def _store_models() -> None:
    """One ``model=<name>`` option per registered model (daqkd.registry.MODELS), the same for all:
    the name, the factory, and the feature taps (null: those registered with the model)."""
    store = ConfigStore.instance()
    for name in list_models():
        store.store(group="model", name=name, node={
            "name": name,
            "factory": {"_target_": "daqkd.models.create_model", "_partial_": True, "name": "${model.name}"},
            "feature_layers": None,
        })


_store_models()


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files and the options stored in code (model=)."""
    names = {p.stem for p in (config_dir() / group).glob("*.yaml")} if (config_dir() / group).is_dir() else set()
    names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)} if _in_store(group) else set()
    return sorted(names)


def _in_store(group: str) -> bool:
    try:
        ConfigStore.instance().list(group)
        return True
    except (OSError, KeyError, AttributeError):
        return False


def config_dir() -> Path:
    """``conf/``: inside the installed package (wheel) or at the top of the checkout (editable)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"daqkd's configs were not found next to {here}; reinstall the package (pip install daqkd)")


# Config groups whose option names are numbers (conf/bits/2.yaml ...). Hydra's override parser
# reads `bits=2` as the integer 2 and rejects it as a group choice; these groups get quoted.
NUMERIC_GROUPS = ("bits",)
_NUMERIC_CHOICE = re.compile(rf"^(?P<key>[+~]?(?:{'|'.join(NUMERIC_GROUPS)}))=(?P<vals>\d+(?:,\d+)*)$")


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``bits=2`` → ``bits='2'`` and ``bits=2,4`` → ``bits='2','4'`` (sweeps), so numeric options
    select the group file as users expect; everything else passes through unchanged."""
    out = []
    for arg in overrides:
        m = _NUMERIC_CHOICE.match(arg)
        out.append(f"{m['key']}=" + ",".join(f"'{v}'" for v in m["vals"].split(",")) if m else arg)
    return out


# Keys Hydra reads in a `_target_` block itself.
_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _target_blocks(node: Any, path: str):
    """Every (path, block) with a `_target_` below ``node``."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            child = node._get_node(key)
            yield from _target_blocks(child if isinstance(child, (DictConfig, ListConfig)) else None, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            yield from _target_blocks(child, f"{path}[{i}]")


def check_target_blocks(cfg: DictConfig) -> None:
    """Every `_target_` block names keys its target takes, each with a value of the type the target's
    signature declares (a misspelt key or a word where a number goes fails here, not hours in)."""
    for path, block in _target_blocks(cfg, ""):
        try:
            target = get_object(str(block._target_))
        except Exception as e:
            raise ConfigError(f"{path}._target_={block._target_} cannot be imported ({e}); check the spelling") from e
        given = [str(k) for k in block if k not in _HYDRA_KEYS]
        check_keys(given, target, path)
        check_target_types(block, target, path)


def _signature_types(target) -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotations, defaults) of a target's parameters (a class: its constructor); annotations that
    cannot be resolved are left out (nothing is checked against them)."""
    import inspect
    import typing

    fn = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return hints, {}
    return hints, {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _fits(value: Any, tp: Any) -> bool | None:
    """Whether a config value can be what annotation ``tp`` declares: True, False, or None where an
    annotation names a class that a config value cannot be checked against (the target converts)."""
    import types
    import typing
    from collections import abc

    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        fits = [_fits(value, a) for a in typing.get_args(tp)]
        return True if any(f is True for f in fits) else (None if any(f is None for f in fits) else False)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if value is None:
        return False
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence) or tp in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin in (dict, abc.Mapping, abc.MutableMapping) or tp is dict:
        return isinstance(value, (dict, DictConfig))
    return None


def _words(tp: Any) -> str:
    import typing

    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else (tp,)
    return " or ".join(dict.fromkeys(names.get(a, getattr(a, "__name__", str(a))) for a in args))


def check_target_types(block: DictConfig, target, path: str) -> None:
    """A ConfigError for a key of a `_target_` block whose value cannot be what the target's signature
    declares (``trainer.log_every_n_steps=abc``): the key, the value, the type and an example."""
    hints, defaults = _signature_types(target)
    for key in block:
        key = str(key)
        if key in _HYDRA_KEYS or key not in hints:
            continue
        try:
            value = block[key]
        except Exception:  # an interpolation only Hydra's run resolves (${hydra:...})
            continue
        if isinstance(value, (DictConfig, ListConfig)) and "_target_" in (value if isinstance(value, DictConfig) else {}):
            continue
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        if _fits(plain, hints[key]) is False:
            default = defaults.get(key)
            example = f", e.g. {path}.{key}={default}" if default is not None and not callable(default) else ""
            raise ConfigError(f"{path}.{key}={plain!r} is not allowed: {getattr(target, '__qualname__', target)} takes "
                              f"{_words(hints[key])} there{example}")


# Where a key added with + may land besides a declared key or a `_target_` block: keyword arguments
# checked by their own owners (a DA's parameters, a data source's options) and Hydra's own settings.
ADDABLE = ("augment.params.", "dataset.datamodule.augment_params.", "dataset.datamodule.source_options.", "hydra.", "callbacks.",
           "logger.")


def check_added_keys(cfg: DictConfig, keys: list[str]) -> None:
    """A ConfigError for a key added with ``+key=value`` that nothing reads: not declared in
    daqkd.schema, not in a `_target_` block (whose keys check_target_blocks checks against its
    target), not in ADDABLE. Names the key and the nearest declared one."""
    known = {k for k, _, _ in schema.declared()}
    for key in keys:
        if key in known or any(key.startswith(p) for p in ADDABLE):
            continue
        parts = key.split(".")
        if any(isinstance(OmegaConf.select(cfg, ".".join(parts[:i]), default=None), DictConfig)
               and "_target_" in OmegaConf.select(cfg, ".".join(parts[:i])) for i in range(1, len(parts))):
            continue
        leaves = (known | set(_leaf_keys(cfg, ""))) - {key}
        near = nearest(key, leaves)
        hint = f"did you mean {near}? " if near else ""
        raise ConfigError(f"+{key}: no part of daqkd reads {key} (it is not a config key, and {'.'.join(parts[:-1]) or 'the top level'} "
                          f"passes no keyword arguments on); {hint}a key that exists is set without +")


def _leaf_keys(node: Any, path: str):
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            where = f"{path}.{key}" if path else str(key)
            if isinstance(child, DictConfig):
                yield from _leaf_keys(child, where)
            else:
                yield where


def check_augmentation(key: str, name: str, num_classes: int, params) -> None:
    """A ConfigError naming ``key`` unless ``name`` (``a`` or ``a+b``) is a DA of the registry with valid parameters."""
    try:
        build_augmentation(name, num_classes, params)
    except (ValueError, TypeError) as e:
        unknown = [part for part in name.split("+") if part not in AUGMENTS]
        if unknown:
            raise ConfigError(f"{key}: {unknown[0]!r} is not a DA; choose from {', '.join(list_augments())} "
                              "(combine a per-image DA with cutmix or mixup as a+cutmix)") from e
        raise ConfigError(f"{key}={name}: {e}") from e


# Examples for the mandatory keys (``???``) a config group leaves to the user.
MANDATORY_EXAMPLES = {
    "dataset.num_classes": "dataset.num_classes=10",
    "dataset.datamodule.source_options.folder": "dataset.datamodule.source_options.folder=/data/mine",
    "dataset.datamodule.mean": "dataset.datamodule.mean=[0.5,0.5,0.5] (python -m daqkd.stats computes it)",
    "dataset.datamodule.std": "dataset.datamodule.std=[0.25,0.25,0.25] (python -m daqkd.stats computes it)",
    "teacher.max_epochs": "teacher.max_epochs=30",
}


def check_mandatory(cfg: DictConfig) -> None:
    """A ConfigError naming the first key the config leaves unset (``???``), with an example."""
    missing = sorted(_missing(cfg, ""))
    if missing:
        key = missing[0]
        more = f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{key} is not set; give it on the command line, e.g. {MANDATORY_EXAMPLES.get(key, key + '=...')}{more}")


def _missing(node: Any, path: str) -> list[str]:
    """Dotted keys whose value is ``???``, found without resolving interpolations (``${hydra:...}``
    cannot be resolved before Hydra runs)."""
    out = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            where = f"{path}.{key}" if path else str(key)
            if child._is_missing():
                out.append(where)
            elif isinstance(child, (DictConfig, ListConfig)):
                out += _missing(child, where)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                out += _missing(child, f"{path}[{i}]")
    return out


# Flags after which Hydra prints or exits without composing a job (no check needed).
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--version",
               "--package", "-p", "--resolve")
# Flags that take the next argument as a value and change which config is composed.
_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun")


def _unquoted(value: str) -> str:
    """A group option as Hydra reads it: ``bits='4'`` and ``bits="4"`` choose option 4."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def check_command_line(argv: list[str], config_name: str = "config", validate: bool = True) -> None:
    """What Hydra would reject, or fail on only once the job runs, as one ConfigError before Hydra
    starts (so a refused run leaves no folder): an option a config group does not have (every value
    of a sweep is checked), an override Hydra cannot apply, a key added with + that nothing reads, a
    mandatory key left unset, an output folder that cannot be written, and every check of
    validate_config on the config of the first value of each sweep (unless ``validate`` is False: a
    command that computes what the checks would hold it to, ``python -m daqkd.stats``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.split("=")[0] in _INFO_FLAGS + _CONFIG_FLAGS for a in argv):
        return  # Hydra prints and exits, or composes from another config: it checks those itself
    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as e:
        raise ConfigError(f"cannot read the command line ({str(e).splitlines()[0]}); overrides look like key=value or group=option") from e
    single, added = [], []
    for o in parsed:
        key = o.get_key_element()
        group = key.lstrip("+~")
        if key.startswith("+") and not group_options(group):
            added.append(group)
        values = None
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # glob(...) and the like: Hydra expands them itself
                values = None
        if group.startswith("hydra"):
            if group in ("hydra.run.dir", "hydra.sweep.dir"):
                check_writable(Path(o.get_value_element_as_str()), group)
            continue
        options = group_options(group)
        if options and not o.is_delete():
            for v in values if values is not None else [o.get_value_element_as_str()]:
                v = _unquoted(v)
                if v not in options and v != "null":
                    raise ConfigError(f"{group}={v} is not an option of {group}; choose one of {', '.join(options)}")
        if o.is_sweep_override():
            if values:
                single.append(f"{key}={values[0]}")
        else:
            single.append(o.input_line)
    if not any(o.split("=")[0].lstrip("+") == "paths.output_dir" for o in single):
        single.append("paths.output_dir=" + tempfile.gettempdir() + "/daqkd-not-written")  # Hydra's own run folder is not known yet
    try:
        cfg = compose_config(single, config_name)
    except Exception as e:
        raise ConfigError(" ".join(str(e).split())) from e
    check_mandatory(cfg)
    check_added_keys(cfg, added)
    if validate and not any(o.split("=")[0] == "ckpt_path" for o in single):  # a resume runs with its run's own config, checked then
        validate_config(cfg)


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The config of ``overrides`` composed outside a Hydra app (tools, benchmarks, tests): the one
    place that does it. ``paths.output_dir`` must be among the overrides where anything resolves it
    (it defaults to Hydra's run folder)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=normalize_overrides(list(overrides)))


def check_writable(folder: Path, key: str) -> None:
    """A ConfigError unless ``folder`` is, or can be made, a folder this process writes to: probed with
    a temporary folder in its nearest existing parent, removed again (root passes os.access checks
    even where nothing can be created, /proc for one)."""
    p = folder.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".daqkd-probe-", dir=p))
    except OSError as e:
        raise ConfigError(f"{key}={folder} cannot be written ({p}: {e.strerror}); choose a folder you can write to") from None


def validate_config(cfg: DictConfig) -> None:
    """The one owner of config checks: raise ConfigError naming the key, the value and what is allowed.
    Single keys are checked against their declarations (``daqkd.schema``); the rules below relate keys."""
    check_mandatory(cfg)
    schema.check(cfg)  # every key against its declaration (type, allowed values): daqkd/schema.py
    names = [("augment.pool", str(n)) for n in cfg.augment.pool or []]
    if cfg.augment.name != "auto":
        names.append(("augment.name", str(cfg.augment.name)))
    names.append(("teacher.augment", str(cfg.teacher.get("augment", "minimal"))))
    for key, name in names:
        check_augmentation(key, name, cfg.dataset.num_classes, cfg.augment.get("params"))
    if cfg.augment.name == "auto" and not list(cfg.augment.pool or []):
        raise ConfigError("augment=auto needs a non-empty augment.pool to choose from")
    n = cfg.metric.num_samples
    if n is not None and n < cfg.dataset.num_classes:
        raise ConfigError(
            f"metric.num_samples={n} is below the number of classes ({cfg.dataset.num_classes}); every class "
            "needs samples for its prototype. Use at least 10 per class, e.g. metric.num_samples=2000, or null for the whole training split."
        )
    m = cfg.metric
    full_precision = cfg.quantizer.get("weight") is None and cfg.quantizer.get("activation") is None
    used = {m.selector} if m.selector != "auto" else {m.short, m.long}
    if "student_m" in used and full_precision:
        key = "metric.selector" if m.selector == "student_m" else ("metric.short" if m.short == "student_m" else "metric.long")
        raise ConfigError(f"{key}=student_m scores the DAs with the quantized student, but quantizer={cfg.quantizer.name} "
                          "quantizes nothing (its M equals the teacher's); choose metric.selector=m, or a quantizer such as quantizer=ewgs")
    if m.get("chunk") is not None and m.chunk % m.batch_size:
        raise ConfigError(f"metric.chunk={m.chunk} is not a multiple of metric.batch_size={m.batch_size}: scoring in rounds must batch "
                          "the images as scoring them at once does (CutMix mixes within a batch); e.g. metric.batch_size=250 metric.chunk=250")
    dm = cfg.dataset.datamodule
    for key in ("mean", "std"):
        values = dm.get(key)
        if isinstance(values, ListConfig) and len(values) != cfg.dataset.in_channels:
            raise ConfigError(f"dataset.in_channels={cfg.dataset.in_channels} does not match dataset.datamodule.{key}, which has "
                              f"{len(values)} value(s); e.g. dataset.in_channels={len(values)} (or give dataset.datamodule.mean and std "
                              f"{cfg.dataset.in_channels} values each)")
    if dm.batch_size < 2:
        raise ConfigError(f"dataset.datamodule.batch_size={dm.batch_size} is too small: training needs at least 2 "
                          "images a step (BatchNorm statistics, EWGS's gradient spread, contrastive KD); e.g. dataset.datamodule.batch_size=64")
    warmup = cfg.teacher.get("warmup_epochs") or 0
    if warmup >= cfg.teacher.max_epochs:
        raise ConfigError(f"teacher.warmup_epochs={warmup} leaves no epoch of teacher.max_epochs={cfg.teacher.max_epochs} for the cosine "
                          "after the warm-up; e.g. teacher.warmup_epochs=0.5")
    if cfg.kd.beta > 0 and cfg.kd.get("method") is None:
        raise ConfigError(f"kd.beta={cfg.kd.beta} weighs a KD method, but kd={cfg.kd.name} has none; choose one (kd=at, crd, dkd, ...)")
    if cfg.ckpt_path not in (None, "last") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist; pass a .ckpt file, or 'last' with the run's hydra.run.dir")
    check_target_blocks(cfg)
