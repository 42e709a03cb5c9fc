"""The one result of a run: what ``python -m daqkd.run`` writes to ``results.json`` and what the report,
the export and the budget grid read. Typed, with a schema version; files of earlier versions load
(fields they lack take their defaults).

Version 1: the dict written before this module (no ``schema_version``). Version 2: adds
``schema_version``, ``selection_how``, ``config_composed``, ``compile``, ``threads`` and the teacher's
``augment``; the rest is unchanged, so version-1 readers of those keys still work.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from daqkd.io import atomic_write_json
from daqkd.metric.scoring import AugmentScore

SCHEMA_VERSION = 2


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class TeacherResult:
    test_acc: float
    source: str  # "given", "cache" or "trained"
    ckpt: str | None = None
    sha256: str | None = None
    augment: str = "minimal"


@dataclass
class StudentResult:
    test_acc: float
    quantizer: str
    bits_w: int
    bits_a: int
    kd: str
    test_loss: float = math.nan
    epochs: int = 0
    ckpt: str | None = None


@dataclass
class RunResult:
    status: str  # "ok" or "failed"
    config: dict[str, Any]
    schema_version: int = SCHEMA_VERSION
    selected_augment: str | None = None
    selection_how: str | None = None
    augment_scores: list[AugmentScore] = field(default_factory=list)
    teacher: TeacherResult | None = None
    student: StudentResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] | None = None
    threads: dict[str, Any] | None = None
    config_composed: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # a failed job's error and traceback, and the command that resumes it
    traceback: str | None = None
    resume: str | None = None
    path: str | None = field(default=None, compare=False)  # where it was read from (not written)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d["augment_scores"] = [s.as_dict() for s in self.augment_scores]  # without the in-memory replicates
        return {k: v for k, v in d.items() if v is not None or k in ("selected_augment",)}

    def write(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None) -> RunResult:
        d = dict(d)
        d.setdefault("schema_version", 1)
        d.setdefault("config", {})
        d.setdefault("status", "ok")
        if d.get("teacher") is not None:
            d["teacher"] = TeacherResult(**_known(TeacherResult, {"source": "?", **d["teacher"]}))
        if d.get("student") is not None:
            d["student"] = StudentResult(**_known(StudentResult, d["student"]))
        d["augment_scores"] = [AugmentScore.from_dict(s) for s in d.get("augment_scores") or []]
        return cls(**_known(cls, d), path=path)

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        """A results.json, of this schema or an earlier one. A file that is not JSON raises ValueError."""
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))
