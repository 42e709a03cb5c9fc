"""Checkpoint reading and writing: atomic saves, and state-dict import with errors that say what to do."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _LightningExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from daqkd.errors import CheckpointError


def _umask_mode() -> int:
    """The mode a file the user writes gets (0o666 less the umask), which mkstemp's 0o600 is not.
    Read from /proc where it can be (setting the umask to read it would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temporary file in the same folder, fsync, then rename over ``path``: a
    reader sees the old file or the new one, never half of one. The file gets the umask's mode (a
    team's shared cache stays readable to the team)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """JSON atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=str).encode()))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin whose saves are atomic (a killed run never leaves a torn .ckpt)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


def read_checkpoint(path: str | Path) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (teacher.ckpt=..., ckpt_path=...)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}). The file is corrupt or not a "
            "PyTorch checkpoint: delete it (a cached teacher is retrained) or point to a good one."
        ) from e


def extract_state_dict(obj: Any, prefixes: tuple[str, ...] = ("model.", "teacher.", "student.", "module.")) -> dict:
    """The model state dict inside a plain ``.pt`` state dict, a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper, or a Lightning ``.ckpt``; a common prefix is stripped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no state dict (a mapping of names to tensors) found in the checkpoint")
    for prefix in prefixes:
        keys = [k for k in obj if k.startswith(prefix)]
        if keys and (len(keys) == len(obj) or prefix in ("model.", "student.")):
            # A Lightning checkpoint of our own module holds student.* and teacher.*: keep one.
            return {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    return dict(obj)


def load_weights(model: nn.Module, path: str | Path, checkpoint: Any = None) -> nn.Module:
    """Load a ``.pt``/``.ckpt`` into ``model`` (``checkpoint``: its content, when already read); a
    key or shape mismatch lists what differs."""
    state = extract_state_dict(read_checkpoint(path) if checkpoint is None else checkpoint)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def cut(xs):
            return ", ".join(xs[:10]) + (f" … (+{len(xs) - 10} more)" if len(xs) > 10 else "")
        raise CheckpointError(
            f"{path} does not fit model {type(model).__name__}: "
            + "; ".join(
                part
                for part in (
                    f"missing keys: {cut(missing)}" if missing else "",
                    f"unexpected keys: {cut(unexpected)}" if unexpected else "",
                    f"shape mismatches: {cut(shapes)}" if shapes else "",
                )
                if part
            )
            + ". Check that model=, dataset= (class count, channels) match the checkpoint."
        )
    model.load_state_dict(state)
    return model


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM (a scheduler's pre-emption, ``kill``) Lightning stops at the next batch boundary;
    this writes ``dirpath/last.ckpt`` (atomically) before the process exits, so ``ckpt_path=last``
    resumes from there."""

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self.saved = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(self.saved)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the curves of the run it continues:
    Lightning's writer deletes ``metrics.csv`` when it finds one. Here the old rows are kept up to the
    first step this launch logs (rows of the interrupted launch past its last checkpoint are redone)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


class _KeepingWriter(_LightningExperimentWriter):
    def __init__(self, log_dir: str):
        path = Path(log_dir) / self.NAME_METRICS_FILE
        self.previous: list[dict] = []
        self.previous_keys: list[str] = []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.previous, self.previous_keys = list(reader), list(reader.fieldnames or [])
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's warns that the old curves will be deleted; they are kept
        if self._fs.isfile(self.metrics_file_path):
            self._fs.rm_file(self.metrics_file_path)

    def save(self) -> None:
        if self.previous and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self.previous if r.get("step") not in (None, "") and int(float(r["step"])) < first]
            self.metrics_keys = sorted(set(self.metrics_keys) | set(self.previous_keys))
            with open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self.previous = []
        super().save()
