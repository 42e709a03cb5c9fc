"""A run folder across launches: what the first launch composed, and whether a later launch may go on.

Hydra writes ``.hydra/{config,overrides,hydra}.yaml`` into a run folder before daqkd's code runs, so
a later launch into the same folder (a relaunched sweep, a resume) has already overwritten them. The
first launch therefore keeps a copy in ``.hydra/original/``; a later launch is compared with it,
and a refused launch puts the files back, so nothing of the run is left rewritten.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from daqkd.errors import ConfigError

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
    return {k: v for k, v in c.items() if k not in RELAUNCH_FREE}


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


def finished(folder: Path) -> dict | None:
    """The folder's results.json if it records a finished run."""
    try:
        done = json.loads((Path(folder) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("status") == "ok" else None


def relaunch(cfg: DictConfig) -> dict | None:
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
    if done is not None:
        put_back(folder)
        return done
    keep_original(folder)
    last = Path(cfg.callbacks.model_checkpoint.dirpath) / "last.ckpt"
    if cfg.ckpt_path is None and last.is_file():
        log.info("%s: an interrupted run left %s; resuming it", folder, last)
        with open_dict(cfg):
            cfg.ckpt_path = "last"
    return None
