"""The benchmark's library: a ``Setup`` (the config, data, teacher and batch every figure measures
with, and the rows of the table), the ``figure`` decorator that registers a timed figure together
with the targets it is checked against, and the helpers they share. The figures live in
``daqkd.bench.training`` and ``daqkd.bench.scoring``; ``daqkd.bench.command`` runs them."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daqkd import build
from daqkd.config import compose_config, validate_config
from daqkd.provenance import peak_rss_mb


@dataclass
class Figure:
    """A timed figure: ``key`` is its place in bench.json (dotted: a part of another figure), ``order``
    when it runs (figures reuse what earlier ones measured, e.g. the QAT step's time), ``targets``
    the bounds its rows are checked against: name -> (≥ or ≤, bound)."""
    key: str
    order: int
    measure: Callable[[Setup], dict]
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)


FIGURES: list[Figure] = []
TARGETS: dict[str, tuple[str, float]] = {}  # every figure's targets by name (filled by @figure)


def figure(key: str, order: int, **targets: tuple[str, float]):
    """Register ``measure(setup) -> dict`` as the figure ``key``, with the targets its rows check."""

    def wrap(measure):
        clash = set(targets) & set(TARGETS)
        if clash or any(f.key == key for f in FIGURES):
            raise ValueError(f"bench figure {key!r} or target {sorted(clash)} declared twice")
        FIGURES.append(Figure(key, order, measure, dict(targets)))
        TARGETS.update(targets)
        return measure

    return wrap


def meets(target: str, ratio: float) -> tuple[str, bool]:
    """(the target as printed, whether ``ratio`` meets it)."""
    op, bound = TARGETS[target]
    label = f"{op} {bound:.0%}" if bound <= 1 else f"{op} {bound:g}"
    return label, (ratio >= bound) if op == "≥" else (ratio <= bound)


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compose_cfg(overrides: list[str]):
    return compose_config(["paths.output_dir=.", *overrides])


class Setup:
    """What the figures measure with (built once), and the rows they report."""

    def __init__(self, overrides: list[str], quick: bool, run: str | None = None):
        self.overrides, self.quick, self.run = overrides, quick, run
        self.repeat = 1 if quick else 8
        self.cfg = compose_cfg(overrides)
        validate_config(self.cfg)  # before any work, as python -m daqkd.run does
        self.dm = build.build_datamodule(self.cfg)
        self.dm.setup()
        self.teacher, self.teacher_source = self.load_teacher()
        self.batch = next(iter(self.dm.train_loader("minimal")))
        self.rows: list[dict] = []
        self.step_time = float("nan")  # seconds of one QAT+KD step, measured by the qat_step figure
        self.figure: Figure | None = None  # the figure measuring now (its rows check its own targets)

    def load_teacher(self):
        """This config's cached teacher when there is one (trained figures), else a random one."""
        from daqkd.io import load_weights

        model = build.build_model(self.cfg)
        path = build.teacher_cache_path(self.cfg, self.dm)
        if path.is_file():
            load_weights(model, path)
            return model.eval(), str(path)
        return model.eval(), "random init (no cached teacher: run `make run` first for trained figures)"

    def row(self, figure: str, value: float, limit: float, ratio: float, target: str, met: bool | None, unit: str = ""):
        self.rows.append({"figure": figure, "value": value, "limit": limit, "ratio": ratio, "target": target, "met": met, "unit": unit})

    def check(self, figure: str, value: float, limit: float, ratio: float, target: str, unit: str = "", compared: float | None = None):
        """A row checked against ``target``, one of the running figure's targets (``compared``: the
        number compared, default ``ratio``)."""
        if self.figure is not None and target not in self.figure.targets:
            raise KeyError(f"bench figure {self.figure.key!r} checks target {target!r} without declaring it in its @figure")
        label, met = meets(target, ratio if compared is None else compared)
        self.row(figure, value, limit, ratio, label, met, unit)

    def table(self) -> str:
        head = f"| {'figure':<58} | {'value':>10} | {'limit':>10} | {'ratio':>7} | {'target':>7} | met |"
        lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        for r in self.rows:
            met = {True: "yes", False: "no", None: "–"}[r["met"]]
            lines.append(f"| {r['figure']:<58} | {r['value']:>10.4g} | {r['limit']:>10.4g} | {r['ratio']:>7.3f} | {r['target']:>7} | {met:>3} |")
        return "\n".join(lines)


@figure("memory", order=100, peak_rss_mb=("≤", 3000.0))
def memory(bench: Setup) -> dict:
    """Peak RSS of this process, and of the default run from its results.json (``--run``)."""
    import json

    out = {"bench_peak_rss_mb": peak_rss_mb()}
    if bench.run:
        run = json.loads(Path(bench.run).read_text())
        out["run_peak_rss_mb"] = run.get("peak_rss_mb")
        if run.get("peak_rss_mb"):
            bench.check("peak RSS of the run", run["peak_rss_mb"], 3000, run["peak_rss_mb"] / 3000, "peak_rss_mb", "MB",
                    compared=run["peak_rss_mb"])
    peak = out["bench_peak_rss_mb"]
    bench.check("peak RSS of this bench", peak, 3000, peak / 3000, "peak_rss_mb", "MB", compared=peak)
    return out
