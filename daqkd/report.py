"""``python -m daqkd.report multirun/<sweep> [more folders] [--rows F --cols F]``: sweeps → evidence.

Reads every ``results.json`` below the folders. Failed jobs (status "failed") are counted and left
out. A *setting* is everything a run was configured with except its seed, its DA and what only
decides where files go or what is shown (``paths``, loggers, progress bars, loader workers, the
``speed`` switches): runs that differ in anything else (epochs, ``kd.alpha``, the teacher's DA, a
learning rate, ``metric.num_samples`` ...) are different settings, and each setting's title names the
keys in which the settings of the report differ. Two runs of one setting, DA and seed are an error
naming both folders. Per setting it reports:

- every fixed DA: the student's test accuracy, mean ± std over seeds, and each selector's score
  (mean over the seeds' teachers);
- the selector table (the DA paper's Table 1): Spearman ρ between each selector's score and the
  mean accuracy across DAs, with a bootstrap 90 % interval over seeds, the DA each selector picks
  (ties: the first in pool order, as ``augment=auto`` does), its rank by accuracy and its regret;
- whether the spread between seeds is smaller than the spread between DAs;
- the ``augment=auto`` runs next to the best and the worst fixed DA.

When settings differ only in ``trainer.max_epochs``, the report adds the budget curve: every
selector's ρ (with its interval) and regret against epochs, as a table and as ``budget.png``. It
writes ``report.md`` and ``report.csv`` into the first folder, ``scatter.png`` (accuracy against M,
one panel per setting) and ``budget.png``; wherever something is left out, a line says why.
``--rows``/``--cols`` add a plain pivot table of any field (e.g. ``--rows quantizer --cols bits``).
Selector values are "lower is predicted better" (daqkd.metric.SELECTORS), so a selector that works
has a negative ρ.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daqkd.augment.registry import PAPER_POOL
from daqkd.errors import DaqkdError, reported_as_one_line
from daqkd.metric.scoring import SELECTORS, AugmentScore, pick, selector_value
from daqkd.metric.select import Rule, decide
from daqkd.result import RunResult

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

# Config keys (and prefixes, ending in ".") that do not make a setting: the run's seed and DA, and
# what only decides where files go, what is shown, or how fast (same numbers).
NOT_A_SETTING = (
    "seed", "augment.name", "metric.selector", "ckpt_path", "task_name", "paths.", "logger.", "callbacks.", "speed.",
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


def setting_config(r: RunResult) -> dict[str, Any]:
    """The keys and values that make a run's setting (see the module's docstring)."""
    flat, composed = flatten(r.config), flatten(r.config_composed)
    out = {}
    for k, v in flat.items():
        if any(k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_A_SETTING):
            continue
        c = composed.get(k)
        if isinstance(c, str) and any(ref in c for ref in ("${seed}", "${paths.", "${hydra:")):
            continue  # follows the seed, or says where files go
        if not composed and k.endswith(".seed") and v == flat.get("seed"):
            continue  # written before the composed config was recorded: these keys were ${seed}
        out[k] = v
    return out


def load_results(folders: list[Path]) -> tuple[list[RunResult], list[RunResult]]:
    """(finished runs, failed runs) below ``folders``, of any results.json schema (daqkd.result)."""
    runs, failed = [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass a sweep folder such as multirun/<date_time> or a run folder")
        for path in sorted(folder.rglob("results.json")):
            try:
                r = RunResult.load(path)
            except (ValueError, TypeError) as e:
                print(f"skipping unreadable {path}: {e}", file=sys.stderr)
                continue
            (runs if r.ok else failed).append(r)
    return runs, failed


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f} (n={len(values)})"


def ranks(v: Sequence[float]) -> list[float]:
    """0-based ranks, ties averaged."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


# ----------------------------------------------------------------------------- per setting


def trained_da(r: RunResult) -> str:
    return r.config["augment"]["name"]


def own_score(r: RunResult) -> AugmentScore | None:
    """The scores of the DA a fixed-DA run trained with (recorded when metric.score_fixed=true)."""
    return next((s for s in r.augment_scores if s.name == r.selected_augment), None)


def pool_order(runs: list[RunResult], das: set[str]) -> list[str]:
    """The DAs in pool order (the runs' ``augment.pool``, then the paper pool), the tie rule's order."""
    order: list[str] = []
    for r in runs:
        order += [d for d in r.config.get("augment", {}).get("pool") or [] if d not in order]
    order += [d for d in PAPER_POOL if d not in order]
    return [d for d in order if d in das] + sorted(das - set(order))


class Setting:
    """The fixed-DA and auto runs of one setting."""

    def __init__(self, config: dict[str, Any], runs: list[RunResult], varying: Sequence[str] = ()):
        self.config = config
        r0 = runs[0]
        self.title = " / ".join(str(field(r0, f)) for f in TITLE)
        extra = [f"{k}={config.get(k, '–')}" for k in varying]
        self.name = self.title + (" · " + ", ".join(extra) if extra else "")
        self.auto = [r for r in runs if trained_da(r) == "auto"]
        self.acc: dict[str, dict[int, float]] = defaultdict(dict)  # DA -> seed -> accuracy (%)
        self.scores: dict[str, dict[int, AugmentScore]] = defaultdict(dict)  # DA -> seed -> its scores
        where: dict[tuple[str, int], str] = {}
        for r in runs:
            da = trained_da(r)
            if da == "auto":
                continue
            seed = r.config["seed"]
            folder = str(Path(r.path).parent) if r.path else "?"
            if (da, seed) in where:
                raise ReportError(f"two runs of one setting with augment={da} and seed={seed}: {where[da, seed]} and {folder}; "
                                  "report them apart, or remove one")
            where[da, seed] = folder
            self.acc[da][seed] = 100 * r.student.test_acc
            s = own_score(r)
            if s is not None:
                self.scores[da][seed] = s
        self.pool = pool_order(runs, set(self.acc))  # every DA, in pool order
        self.das = sorted(self.pool, key=lambda d: -statistics.mean(self.acc[d].values()))  # by mean accuracy

    @property
    def epochs(self) -> Any:
        return self.config.get(BUDGET)

    def mean_acc(self, da: str, seeds: Sequence[int] | None = None) -> float:
        vals = [self.acc[da][s] for s in (seeds if seeds is not None else self.acc[da]) if s in self.acc[da]]
        return statistics.mean(vals) if vals else math.nan

    def mean_score(self, da: str, selector: str, seeds: Sequence[int] | None = None) -> float:
        vals = [selector_value(self.scores[da][s], selector) for s in (seeds if seeds is not None else self.scores[da])
                if s in self.scores[da]]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.mean(vals) if vals else math.nan

    def scored(self, selector: str) -> list[str]:
        """The DAs with a value of ``selector``, in pool order."""
        return [d for d in self.pool if not math.isnan(self.mean_score(d, selector))]

    def pick(self, selector: str, seeds: Sequence[int] | None = None) -> str:
        das = self.scored(selector)
        return pick([(d, self.mean_score(d, selector, seeds)) for d in das])

    def selector_row(self, selector: str, draws: int = 1000, seed: int = 0) -> dict | None:
        das = self.scored(selector)
        if len(das) < 3:  # a rank correlation needs at least three DAs
            return None
        rho = spearman([self.mean_score(d, selector) for d in das], [self.mean_acc(d) for d in das])
        seeds = sorted({s for d in das for s in self.acc[d]})
        rng, boot = random.Random(seed), []
        for _ in range(draws):  # resample seeds (the replicated unit), recompute every mean
            chosen = [rng.choice(seeds) for _ in seeds]
            xs = [self.mean_score(d, selector, chosen) for d in das]
            ys = [self.mean_acc(d, chosen) for d in das]
            ok = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
            if len(ok) >= 3:
                r = spearman([x for x, _ in ok], [y for _, y in ok])
                if not math.isnan(r):
                    boot.append(r)
        boot.sort()
        lo, hi = (boot[int(0.05 * (len(boot) - 1))], boot[int(0.95 * (len(boot) - 1))]) if boot else (math.nan, math.nan)
        picked = self.pick(selector)
        best = max(das, key=self.mean_acc)
        by_acc = sorted(das, key=lambda d: -self.mean_acc(d))
        return {"selector": selector, "rho": rho, "lo": lo, "hi": hi, "pick": picked, "rank": by_acc.index(picked) + 1,
                "of": len(das), "regret": self.mean_acc(best) - self.mean_acc(picked)}

    def rule_row(self, rule: Rule | None = None) -> dict | None:
        """What ``augment=auto`` with ``rule`` (default: the shipped one) would have trained: seed by
        seed, the rule's pick from that seed's scores, and that DA's accuracy with that seed."""
        rule = rule or Rule()
        das = [d for d in self.pool if self.scores[d]]
        seeds = sorted(s for s in set().union(*(self.acc[d].keys() for d in das))
                       if all(s in self.scores[d] and s in self.acc[d] for d in das)) if das else []
        if len(das) < 2 or not seeds:
            return None
        epochs = self.epochs if isinstance(self.epochs, int) else None
        try:
            picks = {s: decide([self.scores[d][s] for d in das], rule, epochs) for s in seeds}
        except ValueError:  # a selector the runs did not record (student_m without a student)
            return None
        accs = [self.acc[picks[s].selected][s] for s in seeds]
        best = max(das, key=lambda d: self.mean_acc(d, seeds))
        acc = statistics.mean(accs)
        minimal = self.mean_acc("minimal", seeds) if "minimal" in das else math.nan
        # The standard error of (auto − minimal) over seeds: the paired per-seed differences.
        diffs = [self.acc[picks[s].selected][s] - self.acc["minimal"][s] for s in seeds] if "minimal" in das else []
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
        return {"selector": picks[seeds[0]].selector, "picks": dict(Counter(p.selected for p in picks.values())), "acc": acc,
                "minimal": minimal, "vs_minimal": acc - minimal, "vs_minimal_se": se, "best": best,
                "regret": self.mean_acc(best, seeds) - acc, "seeds": len(seeds)}

    def spreads(self) -> tuple[float, float]:
        """(mean std across seeds within a DA, std across the DAs' mean accuracies)."""
        within = [statistics.stdev(v.values()) for v in self.acc.values() if len(v) > 1]
        between = [self.mean_acc(d) for d in self.das]
        return (statistics.mean(within) if within else math.nan), (statistics.stdev(between) if len(between) > 1 else math.nan)


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str)


def settings_of(runs: list[RunResult]) -> list[Setting]:
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    configs: dict[tuple, dict] = {}
    for r in runs:
        cfg = setting_config(r)
        key = tuple(sorted((k, _hashable(v)) for k, v in cfg.items()))
        groups[key].append(r)
        configs[key] = cfg
    keys = sorted(set().union(*(c.keys() for c in configs.values()))) if configs else []
    varying = [k for k in keys if len({_hashable(c.get(k)) for c in configs.values()}) > 1]
    settings = [Setting(configs[k], v, varying) for k, v in groups.items()]
    return sorted(settings, key=lambda st: (st.title, str([st.config.get(k) for k in varying if k != BUDGET]),
                                            st.epochs if isinstance(st.epochs, (int, float)) else 0))


def setting_markdown(st: Setting) -> tuple[str, list[dict]]:
    lines = [f"## {st.name}", ""]
    sels = [s for s in SELECTORS if st.scored(s)]
    if st.das:
        lines += ["| DA | test acc % (mean ± std, seeds) | " + " | ".join(sels) + " |",
                  "|" + " --- |" * (2 + len(sels))]
        for d in st.das:
            vals = list(st.acc[d].values())
            lines.append(f"| {d} | {cell(vals)} | " + " | ".join(f"{st.mean_score(d, s):+.4f}" for s in sels) + " |")
        lines.append("")
        if not sels:
            lines += ["No selector scores recorded (the runs had metric.score_fixed=false): no selector table.", ""]
    rows = [row for s in SELECTORS if (row := st.selector_row(s))]
    if rows:
        lines += ["| selector | Spearman ρ (score, accuracy) | 90 % interval (seeds) | pick | rank of pick | regret (points) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['selector']} | {r['rho']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['pick']} | "
                         f"{r['rank']} of {r['of']} | {r['regret']:.2f} |")
        lines += ["", "ρ < 0 means a lower score went with a higher accuracy: the selector ranks as hoped. A pick's ties go "
                  "to the first DA in pool order, as augment=auto's do.", ""]
    elif sels:
        lines += [f"Selector table left out: a rank correlation needs at least 3 scored DAs, this setting has "
                  f"{max(len(st.scored(s)) for s in sels)}.", ""]
    within, between = st.spreads()
    if not math.isnan(within) and not math.isnan(between):
        verdict = ("smaller than" if within < between else "not smaller than")
        lines += [f"Seed-to-seed spread (mean std within a DA) {within:.2f} points is {verdict} the spread between DAs "
                  f"(std of the DAs' means) {between:.2f} points"
                  + ("." if within < between else ": at this budget the DAs cannot be told apart."), ""]
    elif st.das:
        lines += ["Spreads left out: they need at least two seeds of a DA and at least two DAs.", ""]
    auto = st.rule_row()
    if auto:
        picks = ", ".join(f"{d} ×{n}" for d, n in auto["picks"].items())
        lines += [f"augment=auto with the shipped rule ({auto['selector']} at this budget; seed by seed): picks {picks}; "
                  f"{auto['acc']:.2f} % against minimal's {auto['minimal']:.2f} % ({auto['vs_minimal']:+.2f} ± "
                  f"{auto['vs_minimal_se']:.2f}, paired over {auto['seeds']} seeds) and the best fixed DA's ({auto['best']}) regret "
                  f"{auto['regret']:.2f} points.", ""]
    if st.auto:
        accs = [100 * r.student.test_acc for r in st.auto]
        picks = ", ".join(sorted({r.selected_augment for r in st.auto}))
        line = f"auto ({picks}): {cell(accs)}"
        if st.das:
            best, worst = st.das[0], st.das[-1]
            line += f"; best fixed {best} {st.mean_acc(best):.2f}, worst fixed {worst} {st.mean_acc(worst):.2f}"
        lines += [line, ""]
    return "\n".join(lines), rows


# ----------------------------------------------------------------------------- the budget curve


def budget_families(settings: list[Setting]) -> list[list[Setting]]:
    """Settings equal in everything but the epochs, at least two budgets each, cheapest first."""
    fam: dict[str, list[Setting]] = defaultdict(list)
    for st in settings:
        if isinstance(st.epochs, int):
            fam[_hashable({k: v for k, v in st.config.items() if k != BUDGET})].append(st)
    return [sorted(v, key=lambda st: st.epochs) for v in fam.values() if len(v) > 1]


def family_name(family: list[Setting]) -> str:
    name = family[0].name
    return name.replace(f"{BUDGET}={family[0].epochs}, ", "").replace(f", {BUDGET}={family[0].epochs}", "").replace(
        f" · {BUDGET}={family[0].epochs}", "")


def budget_markdown(family: list[Setting]) -> tuple[str, list[dict]]:
    rows = []
    for st in family:
        for sel in SELECTORS:
            row = st.selector_row(sel)
            if row:
                rows.append({"epochs": st.epochs, **row})
    lines = [f"## Budget curve: {family_name(family)}", ""]
    if not rows:
        return "\n".join(lines + ["No budget has 3 scored DAs: no curve.", ""]), rows
    epochs = [st.epochs for st in family]
    lines += ["ρ(score, accuracy) [90 % interval over seeds] and regret (points) of each selector's pick, per budget "
              "(epochs of the student):", "",
              "| selector | " + " | ".join(f"{e} ep: ρ [interval] · regret" for e in epochs) + " |",
              "| --- |" + " --- |" * len(epochs)]
    for sel in SELECTORS:
        cells = []
        for e in epochs:
            r = next((x for x in rows if x["epochs"] == e and x["selector"] == sel), None)
            cells.append(f"{r['rho']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] · {r['regret']:.2f} ({r['pick']})" if r else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    cells = []
    for st in family:
        a = st.rule_row()
        cells.append(f"{a['acc']:.2f} ({a['vs_minimal']:+.2f} ± {a['vs_minimal_se']:.2f} vs minimal) · {a['regret']:.2f} "
                     f"({', '.join(a['picks'])})" if a else "–")
    lines += ["| **augment=auto** (shipped rule): accuracy (vs minimal, paired) · regret (picks) | " + " | ".join(cells) + " |", ""]
    spread = []
    for st in family:
        within, between = st.spreads()
        best, worst = (st.das[0], st.das[-1]) if st.das else ("–", "–")
        spread.append(f"| {st.epochs} | {within:.2f} | {between:.2f} | {best} {st.mean_acc(best):.2f} | "
                      f"{worst} {st.mean_acc(worst):.2f} | {st.mean_acc('minimal'):.2f} |")
    lines += ["| epochs | seed spread (points) | DA spread (points) | best DA | worst DA | minimal |",
              "| --- | --- | --- | --- | --- | --- |", *spread, ""]
    return "\n".join(lines), rows


def budget_plot(families: list[list[Setting]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(families), 2, figsize=(12, 4.2 * len(families)), squeeze=False)
    for (ax_rho, ax_reg), family in zip(axes, families):
        epochs = [st.epochs for st in family]
        for i, sel in enumerate(SELECTORS):
            pts = [(st.epochs, st.selector_row(sel)) for st in family]
            pts = [(e, r) for e, r in pts if r]
            if not pts:
                continue
            es = [e * (1 + 0.03 * (i - len(SELECTORS) / 2)) for e, _ in pts]  # side by side, not on top of each other
            rho = [r["rho"] for _, r in pts]
            err = [[r["rho"] - r["lo"] for _, r in pts], [r["hi"] - r["rho"] for _, r in pts]]
            ax_rho.errorbar(es, rho, yerr=err, marker="os^v<>Dph*"[i % 10], capsize=3, color=f"C{i}", label=sel)
            ax_reg.plot(es, [r["regret"] for _, r in pts], marker="os^v<>Dph*"[i % 10], color=f"C{i}", label=sel)
        auto = [(st.epochs, st.rule_row()) for st in family]
        auto = [(e, r) for e, r in auto if r]
        if auto:
            ax_reg.plot([e for e, _ in auto], [r["regret"] for _, r in auto], "k--", marker="*", markersize=10,
                        label="augment=auto (shipped rule, seed by seed)")
        for ax in (ax_rho, ax_reg):
            ax.set_xscale("log", base=2)
            ax.set_xticks(epochs, [str(e) for e in epochs])
            ax.set_xlabel("student epochs (log scale)")
        ax_rho.axhline(0, color="grey", lw=0.8)
        ax_rho.set_ylabel("Spearman ρ(score, accuracy)\nbelow 0: the selector ranks as hoped")
        ax_rho.set_title(f"{family_name(family)}\nbars: 90 % bootstrap interval over seeds; colours as in the legend on the right",
                         fontsize=8)
        ax_reg.set_ylabel("regret of the pick (points)\nbest DA's accuracy − pick's")
        ax_reg.set_title("0: the selector picked the best DA", fontsize=8)
        # Beside the axes, never over a line.
        ax_reg.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, title="selector", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def scatter(settings: list[Setting], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [st for st in settings if len(st.scored("m")) >= 1]
    if not shown:
        return
    cols = min(len(shown), 3)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.8 * cols, 4.8 * rows), squeeze=False)
    markers = {sel: "osD^v<>ph*"[i % 10] for i, sel in enumerate(SELECTORS)}
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, st in zip(axes.flat, shown):
        das = st.scored("m")
        placed: list[tuple[float, float]] = []
        for d in das:
            ms = [selector_value(s, "m") for s in st.scores[d].values()]
            accs = list(st.acc[d].values())
            x, y = statistics.mean(ms), statistics.mean(accs)
            ax.errorbar(x, y, xerr=mean_std(ms)[1], yerr=mean_std(accs)[1], fmt="o", color="tab:blue", capsize=3)
            # Labels of DAs with nearly equal accuracy and M are stacked instead of printed over each other.
            near = sum(1 for px, py in placed if abs(px - x) < 0.05 and abs(py - y) < 0.3)
            ax.annotate(d, (x, y), textcoords="offset points", xytext=(5, 4 - 9 * near), fontsize=7)
            placed.append((x, y))
        picked = False
        if len(das) >= 3:
            for i, sel in enumerate(SELECTORS):
                if st.scored(sel) and len(st.scored(sel)) >= 3:
                    d = st.pick(sel)
                    ax.scatter([st.mean_score(d, "m")], [st.mean_acc(d)], s=140 + 50 * i, facecolors="none",
                               edgecolors=f"C{i + 1}", marker=markers[sel], label=f"pick of {sel}")
                    picked = True
        ax.set_xlabel("M = DEV − CMI (mean over seeds; lower is predicted better)")
        ax.set_ylabel("student test accuracy, % (mean over seeds)")
        ax.set_title(st.name + "\nbars: ±1 std over seeds" + ("" if picked else "; no picks: fewer than 3 scored DAs"), fontsize=8)
        if picked:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the plain pivot


def pivot(runs: list[RunResult], rows: str, cols: str, metric: str) -> tuple[list, list, dict]:
    table: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        table[(field(r, rows), field(r, cols))].append(float(field(r, metric)))
    row_keys = sorted({k[0] for k in table}, key=str)
    col_keys = sorted({k[1] for k in table}, key=str)
    return row_keys, col_keys, table


def pivot_markdown(row_keys, col_keys, table, rows: str) -> str:
    lines = [f"| {rows} | " + " | ".join(map(str, col_keys)) + " |", "|" + " --- |" * (len(col_keys) + 1)]
    for rk in row_keys:
        lines.append(f"| {rk} | " + " | ".join(cell(table.get((rk, ck), [])) for ck in col_keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.report", description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep folders (multirun/<date_time>) or run folders")
    ap.add_argument("--rows", default=None, help=f"pivot rows: {', '.join(FIELDS)} or a dotted path into results.json")
    ap.add_argument("--cols", default="bits", help="pivot columns")
    ap.add_argument("--metric", default="test_acc", help="pivot cells (default: student test accuracy, %%)")
    ap.add_argument("--wandb", action="store_true", help="log the tables and figures to a W&B summary run of the sweep's group "
                    "(offline without an API key: make sync uploads it)")
    ap.add_argument("--plot", action="store_true", help="kept for compatibility: the figures are always written when matplotlib is there")
    args = ap.parse_args(argv)
    with reported_as_one_line():
        return report(args)


def report(args: argparse.Namespace) -> int:
    runs, failed = load_results(args.folders)
    if not runs:
        print(f"no finished results.json under {', '.join(map(str, args.folders))}"
              + (f" ({len(failed)} failed jobs)" if failed else ""), file=sys.stderr)
        return 1
    settings = settings_of(runs)
    families = budget_families(settings)
    parts = [f"# Sweep report: {len(runs)} runs in {len(settings)} setting{'s' if len(settings) > 1 else ''}"
             + (f", {len(failed)} failed and left out" if failed else "")]
    for r in failed:
        parts.append(f"- failed: {Path(r.path).parent} — {r.error or '?'}")
    csv_rows = []
    for family in families:
        text, rows = budget_markdown(family)
        parts.append(text + "\nFigure: budget.png.\n")
    for st in settings:
        text, rows = setting_markdown(st)
        parts.append(text)
        csv_rows += [{"setting": st.name, "epochs": st.epochs, **r} for r in rows]
    if args.rows:
        row_keys, col_keys, table = pivot(runs, args.rows, args.cols, args.metric)
        parts.append(f"## {args.metric} by {args.rows} × {args.cols}\n\n" + pivot_markdown(row_keys, col_keys, table, args.rows))
    out = args.folders[0]
    figures = {}
    try:
        scatter(settings, out / "scatter.png")
        figures["scatter"] = out / "scatter.png"
        if families:
            budget_plot(families, out / "budget.png")
            figures["budget"] = out / "budget.png"
    except ImportError:
        parts.append("No figures: matplotlib is not installed (pip install matplotlib).")
    text = "\n\n".join(parts) + "\n"
    print(text)
    (out / "report.md").write_text(text)
    keys = ["setting", "epochs", "selector", "rho", "lo", "hi", "pick", "rank", "of", "regret"]
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(csv_rows)
    if args.wandb:
        from daqkd.wandb_setup import log_sweep_summary

        runs_table = [[str(Path(r.path).parent), field(r, "augment"), field(r, "selected"), field(r, "seed"), field(r, "test_acc")]
                      for r in runs]
        where = log_sweep_summary(out, {"selectors": (keys, [[row.get(k) for k in keys] for row in csv_rows]),
                                        "runs": (["run", "augment", "selected", "seed", "test_acc"], runs_table)}, figures)
        print(f"W&B summary run: {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
