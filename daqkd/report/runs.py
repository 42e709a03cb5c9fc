"""Reading runs: every ``results.json`` below the folders (and inside ``*.tar.gz`` archives of run
folders, as the committed grids are packed), finished and failed, and what a run's setting is."""
from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daqkd.errors import DaqkdError
from daqkd.result import RunResult
from daqkd.schema import without_later_defaults

# Short names for the fields people group by; anything else is a dotted path into results.json.
FIELDS: dict[str, Callable[[RunResult], Any]] = {
    "quantizer": lambda r: r.student.quantizer,
    "bits": lambda r: f"W{r.student.bits_w}A{r.student.bits_a}",
    "kd": lambda r: r.student.kd,
    "augment": lambda r: r.config["augment"]["name"],
    "selected": lambda r: r.selected_augment,
    "seed": lambda r: r.config["seed"],
    "dataset": lambda r: r.config["dataset"]["name"],
    "model": lambda r: r.config["model"]["name"],
    "epochs": lambda r: r.config.get("trainer", {}).get("max_epochs"),
    "test_acc": lambda r: 100 * r.student.test_acc,
    "teacher_acc": lambda r: 100 * r.teacher.test_acc,
}
TITLE = ("dataset", "model", "quantizer", "bits", "kd")  # always in a setting's title

# The two axes of a grid: a run's seed and its DA. Neither makes a setting; each setting tabulates them.
AXES = ("seed", "augment.name")
# How augment=auto decides: these change what an auto run trains, so auto runs of a setting are told
# apart by them, but not what a fixed-DA run trains (tests/test_setting_keys.py).
RULE_KEYS = ("metric.selector", "metric.short", "metric.long", "metric.long_epochs", "metric.tie", "metric.tie_z", "metric.stop_z",
             "metric.chunk")
# Config keys (and prefixes, ending in ".") that leave a run's numbers as they are: where files go,
# what is shown, loader workers, batch sizes of evaluation (float tolerance), whether extra scores are
# recorded. tests/test_setting_keys.py changes each and compares the run's numbers. The speed.*
# switches are not among them: the convolutions sum in another order, and a 2-bit quantizer's
# rounding makes other numbers of that within a few steps, as another CPU would.
NOT_A_SETTING = (
    "ckpt_path", "task_name", "paths.", "logger.", "callbacks.model_checkpoint.dirpath", "callbacks.model_checkpoint.filename",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_model_summary", "trainer.default_root_dir",
    "dataset.datamodule.num_workers", "dataset.datamodule.eval_batch_size", "metric.batch_size", "metric.score_fixed",
    "metric.score_student",
)
BUDGET = "trainer.max_epochs"


class ReportError(DaqkdError):
    """A report that cannot be made as asked (a missing folder, two runs of one setting, DA and seed)."""


def field(results: RunResult, name: str) -> Any:
    """A short field name (FIELDS), or a dotted path into the run's results.json."""
    if name in FIELDS:
        return FIELDS[name](results)
    value: Any = results.to_dict()
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DaqkdError(f"--rows/--cols/--metric {name!r}: no such field in {results.path or 'results.json'}; use one of "
                             f"{', '.join(FIELDS)} or a dotted path into results.json, e.g. student.test_acc")
        value = value[part]
    return value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _listed(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in keys)


def setting_config(r: RunResult) -> dict[str, Any]:
    """The keys and values that make a run's setting: the whole config but the axes, the rule keys and
    NOT_A_SETTING, and the values that follow the seed or say where files go."""
    flat, composed = flatten(without_later_defaults(r.config)), flatten(r.config_composed)
    out = {}
    for k, v in flat.items():
        if _listed(k, AXES + RULE_KEYS + NOT_A_SETTING):
            continue
        c = composed.get(k)
        if isinstance(c, str) and any(ref in c for ref in ("${seed}", "${paths.", "${hydra:", "${" + BUDGET + "}")):
            continue  # follows the seed or the budget (validation every max_epochs/16 epochs), or says where files go
        if not composed and k.endswith(".seed") and v == flat.get("seed"):
            continue  # written before the composed config was recorded: these keys were ${seed}
        out[k] = v
    return out


def rule_of(r: RunResult) -> tuple[tuple[str, Any], ...]:
    """The rule keys of an auto run, as recorded (what tells two auto runs of one setting apart)."""
    flat = flatten(r.config)
    return tuple((k, flat.get(k)) for k in RULE_KEYS)


def where(r: RunResult) -> str:
    """The run's folder (inside an archive: ``archive.tar.gz:member folder``)."""
    return str(Path(r.path).parent) if r.path and ":" not in r.path else (r.path.rsplit("/results.json", 1)[0] if r.path else "?")


def commit_of(r: RunResult) -> str:
    return str(r.provenance.get("git_commit") or "unknown")


def _from_archive(archive: Path) -> list[RunResult]:
    out = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and Path(member.name).name == "results.json":
                    data = tar.extractfile(member).read()
                    try:
                        out.append(RunResult.from_dict(json.loads(data), f"{archive}:{member.name}"))
                    except (ValueError, TypeError) as e:
                        print(f"skipping unreadable {archive}:{member.name}: {e}", file=sys.stderr)
    except (tarfile.TarError, OSError, EOFError) as e:
        why = " ".join(str(e).split())[:120]
        raise ReportError(f"{archive} is not a readable tar.gz archive ({why}); unpack it by hand or remove it from the folder") from None
    return out


def load_results(folders: list[Path]) -> tuple[list[RunResult], list[RunResult]]:
    """(finished runs, failed runs) below ``folders`` and in the ``*.tar.gz`` archives there, of any
    results.json schema (daqkd.result). A run found both unpacked and in an archive counts once (the
    unpacked file)."""
    runs, failed = [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass a sweep folder such as multirun/<date_time> or a run folder")
        found: list[RunResult] = []
        for path in sorted(folder.rglob("results.json")):
            try:
                found.append(RunResult.load(path))
            except (ValueError, TypeError) as e:
                print(f"skipping unreadable {path}: {e}", file=sys.stderr)
        unpacked = {str(Path(r.path).parent.resolve()) for r in found}
        for archive in sorted(folder.rglob("*.tar.gz")):
            for r in _from_archive(archive):
                member = r.path.split(":", 1)[1]
                if str((archive.parent / member).parent.resolve()) not in unpacked:
                    found.append(r)
        for r in found:
            (runs if r.ok else failed).append(r)
    return runs, failed
