"""Weights & Biases for runs and sweeps (logger=wandb or logger=many).

- Online only when an API key is there (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc);
  otherwise offline, writing under the run folder for ``make sync`` (``wandb sync``) later. Online,
  ``wandb.init`` gives up after ``init_timeout`` seconds and the run goes on offline, so a run never
  hangs on the network.
- In a Hydra sweep the sweep folder (``multirun/<date_time>``) is the W&B group, and every config
  group choice is a tag (``quantizer=ewgs``, ``bits=2``, ...), so the W&B UI groups and filters
  runs as the sweep does.
- The run id is kept in ``<run folder>/wandb_id.txt``: a resumed run (``ckpt_path=last``) continues
  the same W&B run.
- ``log_sweep_summary`` logs the report's tables and scatter plot to one summary run of the group.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
TAGGED_GROUPS = ("dataset", "model", "augment", "pool", "quantizer", "bits", "kd", "trainer", "experiment", "cluster")
ID_FILE = "wandb_id.txt"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def hydra_context() -> tuple[str | None, list[str]]:
    """(the sweep folder's name when this is a multirun job, the config-group choices as tags)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra (tests, the API)
        return None, []
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    choices = hc.runtime.choices
    tags = [f"{k}={choices[k]}" for k in TAGGED_GROUPS if choices.get(k) not in (None, "null")]
    return group, tags


def run_id(output_dir: str | Path) -> str:
    """This run folder's W&B id: read back when resuming, else new and written down."""
    import uuid

    path = Path(output_dir) / ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    rid = uuid.uuid4().hex[:8]
    path.write_text(rid + "\n")
    return rid


def logger_kwargs(settings: dict[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """The WandbLogger arguments of ``logger.wandb`` completed with group, tags, id, resume and mode."""
    import wandb

    kw = dict(settings)
    group, tags = hydra_context()
    kw["group"] = kw.get("group") or group
    kw["tags"] = list(dict.fromkeys([*(kw.get("tags") or []), *tags]))
    kw["id"] = kw.get("id") or run_id(output_dir)
    kw.setdefault("resume", "allow")
    offline = kw.get("offline")
    if offline is None:  # auto
        offline = not has_api_key()
        if offline:
            log.info("W&B: no API key (WANDB_API_KEY or wandb login): logging offline; upload later with make sync")
        elif not reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
            offline = True
            log.warning("W&B: the server cannot be reached: logging offline; upload later with make sync")
    kw["offline"] = bool(offline)
    timeout = kw.pop("init_timeout", 60)
    kw["settings"] = wandb.Settings(init_timeout=timeout, silent=True)
    return kw


def log_sweep_summary(folder: Path, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path],
                      project: str = "daqkd", offline: bool | None = None) -> str:
    """One run of the sweep's group (job_type "summary") holding the report's tables and plots; returns its folder."""
    import wandb

    offline = (not has_api_key()) if offline is None else offline
    run = wandb.init(project=project, group=folder.name, job_type="summary", name=f"{folder.name}-summary", dir=str(folder),
                     mode="offline" if offline else "online", reinit="finish_previous",
                     settings=wandb.Settings(init_timeout=60, silent=True))
    try:
        for name, (columns, rows) in tables.items():
            run.log({name: wandb.Table(columns=columns, data=rows)})
        for name, path in images.items():
            if path.is_file():
                run.log({name: wandb.Image(str(path))})
        return run.dir
    finally:
        run.finish()
