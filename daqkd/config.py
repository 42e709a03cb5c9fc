"""Where the configs live, and the checks that reject a bad config before any work starts."""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from daqkd.augment import available_augments, build_augmentation
from daqkd.quant.base import ALLOWED_BITS


class ConfigError(ValueError):
    pass


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
_NUMERIC_CHOICE = re.compile(r"^(?P<key>[+~]?(?:%s))=(?P<vals>\d+(?:,\d+)*)$" % "|".join(NUMERIC_GROUPS))


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``bits=2`` → ``bits='2'`` and ``bits=2,4`` → ``bits='2','4'`` (sweeps), so numeric options
    select the group file as users expect; everything else passes through unchanged."""
    out = []
    for arg in overrides:
        m = _NUMERIC_CHOICE.match(arg)
        out.append(f"{m['key']}=" + ",".join(f"'{v}'" for v in m["vals"].split(",")) if m else arg)
    return out


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the value and what is allowed."""
    for key in ("w", "a"):
        value = cfg.bits[key]
        if value not in ALLOWED_BITS:
            raise ConfigError(
                f"bits.{key}={value} is not supported; allowed: {', '.join(map(str, ALLOWED_BITS))} "
                "(32 = full precision), e.g. bits=4 or bits.w=2 bits.a=4"
            )
    names = list(cfg.augment.pool or [])
    if cfg.augment.name != "auto":
        names.append(cfg.augment.name)
    for name in names:
        try:
            build_augmentation(name, cfg.dataset.num_classes, cfg.augment.get("params"))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"augment: {e} (choose augment=auto or one of {', '.join(available_augments())})") from e
    if cfg.augment.name == "auto" and not names:
        raise ConfigError("augment=auto needs a non-empty augment.pool to choose from")
    n = cfg.metric.num_samples
    if n is not None and n < cfg.dataset.num_classes:
        raise ConfigError(
            f"metric.num_samples={n} is below the number of classes ({cfg.dataset.num_classes}); every class "
            "needs samples for its prototype. Use at least 10 per class, or null for the whole training split."
        )
    if cfg.kd.beta > 0 and cfg.kd.get("feature") is None:
        raise ConfigError(f"kd.beta={cfg.kd.beta} weighs a feature loss, but kd={cfg.kd.name} has none; choose a feature method (kd=at, crd, ...)")
    if cfg.quantizer.first_last not in ("fp", "int8", "same"):
        raise ConfigError(f"quantizer.first_last={cfg.quantizer.first_last!r}; expected fp, int8 or same")
    if cfg.ckpt_path not in (None, "last") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist; pass a .ckpt file, or 'last' with the run's hydra.run.dir")
