"""A run folder across launches: what the first launch composed, and whether a later launch may go on.

Hydra writes ``.hydra/{config,overrides,hydra}.yaml`` into a run folder before daqkd's code runs, so
a later launch into the same folder (a relaunched sweep, a resume) has already overwritten them. The
first launch therefore keeps a copy in ``.hydra/original/``; a later launch is compared with it,
and a refused launch puts the files back, so nothing of the run is left rewritten.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from daqkd.errors import ConfigError
from daqkd.result import RunResult
from daqkd.schema import without_later_defaults

log = logging.getLogger("daqkd")

HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
# Keys that may differ between a launch and a relaunch of the same run: where things are written, how
# to resume, and what only shows progress.
RELAUNCH_FREE = ("paths", "ckpt_path")


def original_dir(folder: Path) -> Path:
    return Path(folder) / ".hydra" / "original"


def keep_original(folder: Path) -> None:
    """Copy this launch's ``.hydra`` files to ``.hydra/original`` unless an earlier launch did."""
    src, dst = Path(folder) / ".hydra", original_dir(folder)
    if dst.is_dir() or not (src / "config.yaml").is_file():
        return
    dst.mkdir(parents=True)
    for name in HYDRA_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def put_back(folder: Path) -> None:
    """Restore the first launch's ``.hydra`` files over those this launch wrote."""
    dst, src = Path(folder) / ".hydra", original_dir(folder)
    for name in HYDRA_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def composed(cfg: DictConfig | dict) -> dict:
    """A config as composed (interpolations unresolved), without the keys a relaunch may change."""
    c = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in without_later_defaults(c).items() if k not in RELAUNCH_FREE}


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def finished(folder: Path) -> RunResult | None:
    """The folder's results.json if it records a finished run."""
    try:
        done = RunResult.load(Path(folder) / "results.json")
    except (OSError, ValueError, TypeError):
        return None
    return done if done.ok else None


def relaunch(cfg: DictConfig) -> RunResult | None:
    """A sweep job launched into a folder an earlier launch used goes on where it stopped: the
    results of a finished run are returned (the job is skipped); an interrupted run that left a
    ``last.ckpt`` is resumed (``ckpt_path`` set to it); a folder holding a run of another config is
    refused with a ConfigError, its ``.hydra`` files put back. Returns None when the job is to run."""
    folder = Path(cfg.paths.output_dir)
    original = original_dir(folder) / "config.yaml"
    if original.is_file():
        changed = differences(composed(OmegaConf.load(original)), composed(cfg))
        if changed:
            put_back(folder)
            raise ConfigError(
                f"{folder} holds a run of another config (differs in {', '.join(changed[:5])}); relaunch with the same "
                "overrides, or sweep into a new folder (hydra.sweep.dir=...)"
            )
    done = finished(folder)
    if done is not None and not original.is_file() and done.config_composed:
        # a run from before .hydra/original: compare with what its results.json recorded
        changed = differences(composed(done.config_composed), composed(cfg))
        if changed:
            raise ConfigError(f"{folder} holds a run of another config (differs in {', '.join(changed[:5])}); relaunch with the same "
                              "overrides, or sweep into a new folder (hydra.sweep.dir=...)")
    if done is not None:
        put_back(folder)
        return done
    last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
    if cfg.ckpt_path is None and last.is_file():
        log.info("%s: an interrupted run left %s; resuming it", folder, last)
        with open_dict(cfg):
            cfg.ckpt_path = "last"
    return None


def holds_a_run(folder: Path) -> bool:
    folder = Path(folder)
    return original_dir(folder).is_dir() or (folder / "results.json").is_file() or any((folder / "checkpoints").glob("*.ckpt"))


def resume_or_start(cfg: DictConfig) -> DictConfig:
    """A single run (not a sweep job) into ``hydra.run.dir``: the config to run with.

    - A new folder: this launch's config (and its ``.hydra`` files are kept as the original).
    - A folder that holds a run, with ``ckpt_path``: the run's own config, as first composed, so
      ``hydra.run.dir=<run> ckpt_path=last`` alone resumes it; overrides given now must agree with it,
      and a launch that would change any key is refused (one line naming the keys).
    - A folder that holds a run, without ``ckpt_path``: refused, as a new run would overwrite it.
    Every refusal puts the run's ``.hydra`` files back and leaves everything else as it was."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    folder = Path(cfg.paths.output_dir)
    original = original_dir(folder) / "overrides.yaml"
    if not holds_a_run(folder):
        return cfg  # run.train keeps this launch's files as the original once the config is valid
    if cfg.ckpt_path is None:
        put_back(folder)
        raise ConfigError(f"{folder} already holds a run; resume it with ckpt_path=last, or start a new run in another "
                          "folder (leave hydra.run.dir out)")
    if not original.is_file():  # a run from before daqkd kept its first launch's files: as given
        return cfg
    first = [str(o) for o in OmegaConf.load(original)]
    now = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "hydra."))]
    try:
        run_cfg = compose("config", overrides=first)
        asked = compose("config", overrides=first + now)
    except Exception as e:  # an override that cannot apply on top of the run's own (a repeated +key=...)
        put_back(folder)
        raise ConfigError(f"{folder} cannot be resumed with these overrides ({' '.join(str(e).split())}); resume with: "
                          f"python -m daqkd.run hydra.run.dir={folder} ckpt_path={cfg.ckpt_path}") from None
    changed = differences(composed(run_cfg), composed(asked))
    if changed:
        put_back(folder)
        raise ConfigError(
            f"{folder} was run with {' '.join(first) or 'the defaults'}; resuming it with {', '.join(changed[:5])} changed is "
            f"refused. Resume with: python -m daqkd.run hydra.run.dir={folder} ckpt_path={cfg.ckpt_path}"
        )
    put_back(folder)
    with open_dict(asked):
        asked.ckpt_path = cfg.ckpt_path
    return asked


# What Hydra writes into a run folder before daqkd's code runs: a folder holding nothing else was made
# by this launch alone (an earlier launch's folder holds .hydra/original, a results.json or checkpoints).
_HYDRA_ONLY = {".hydra", "run.log", "train.log", "score.log", "teacher.log"}


def discard_refused(folder: Path, this_launch: bool = False) -> bool:
    """Remove a run folder that a refused launch left: only Hydra's ``.hydra`` files and ``*.log``
    files, and with ``this_launch`` (the caller knows no earlier launch made the run) the copy of
    them this launch kept (``.hydra/original``), so no file of an earlier launch or of the user's goes.
    Returns whether it was removed."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "results.json").exists() or any((folder / "checkpoints").glob("*.ckpt")):
        return False
    if original_dir(folder).exists() and not this_launch:
        return False
    entries = list(folder.iterdir())
    if any(e.name not in _HYDRA_ONLY and not (e.is_file() and e.suffix == ".log") for e in entries):
        return False
    hydra = folder / ".hydra"
    allowed = set(HYDRA_FILES) | ({"original"} if this_launch else set())
    if hydra.is_dir() and any(p.name not in allowed for p in hydra.iterdir()):
        return False
    if (original_dir(folder)).is_dir() and any(p.name not in HYDRA_FILES for p in original_dir(folder).iterdir()):
        return False
    shutil.rmtree(folder)
    return True
