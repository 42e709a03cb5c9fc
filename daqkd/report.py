"""``python -m daqkd.report multirun/<sweep> [more folders] [--rows F --cols F] [--plot]``: sweeps → evidence.

Reads every ``results.json`` below the folders. Failed jobs (status "failed") are counted and left
out. Runs are grouped by setting (data set, model, quantizer, bits, KD); per setting it reports:

- every fixed DA: the student's test accuracy, mean ± std over seeds, and each selector's score
  (mean over the seeds' teachers);
- the selector table (the DA paper's Table 1): Spearman ρ between each selector's score and the
  mean accuracy across DAs, with a bootstrap 90 % interval over seeds, the DA each selector picks,
  its rank by accuracy and its regret (best DA's accuracy minus the pick's);
- whether the spread between seeds is smaller than the spread between DAs;
- the ``augment=auto`` runs next to the best and the worst fixed DA.

It writes ``report.md`` and ``report.csv`` into the first folder and ``scatter.png`` (accuracy
against M with error bars across seeds, one panel per setting, each selector's pick marked).
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
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daqkd.metric.scoring import SELECTORS, AugmentScore, selector_value

# Short names for the fields people group by; anything else is a dotted path into results.json.
FIELDS: dict[str, Callable[[dict], Any]] = {
    "quantizer": lambda r: r["student"]["quantizer"],
    "bits": lambda r: f"W{r['student']['bits_w']}A{r['student']['bits_a']}",
    "kd": lambda r: r["student"].get("kd", r["config"]["kd"]["name"]),
    "augment": lambda r: r["config"]["augment"]["name"],
    "selected": lambda r: r["selected_augment"],
    "seed": lambda r: r["config"]["seed"],
    "dataset": lambda r: r["config"]["dataset"]["name"],
    "model": lambda r: r["config"]["model"]["name"],
    "test_acc": lambda r: 100 * r["student"]["test_acc"],
    "teacher_acc": lambda r: 100 * r["teacher"]["test_acc"],
}
SETTING = ("dataset", "model", "quantizer", "bits", "kd")


def field(results: dict, name: str) -> Any:
    if name in FIELDS:
        return FIELDS[name](results)
    value: Any = results
    for part in name.split("."):
        value = value[part]
    return value


def load_results(folders: list[Path]) -> tuple[list[dict], list[dict]]:
    """(finished runs, failed runs) below ``folders``."""
    runs, failed = [], []
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist; pass a sweep folder such as multirun/<date_time>")
        for path in sorted(folder.rglob("results.json")):
            try:
                r = json.loads(path.read_text()) | {"_path": str(path)}
            except json.JSONDecodeError as e:
                print(f"skipping unreadable {path}: {e}", file=sys.stderr)
                continue
            (failed if r.get("status") == "failed" else runs).append(r)
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


def trained_da(r: dict) -> str:
    return r["config"]["augment"]["name"]


def own_score(r: dict) -> AugmentScore | None:
    """The scores of the DA a fixed-DA run trained with (recorded when metric.score_fixed=true)."""
    for s in r.get("augment_scores", []):
        if s["name"] == r["selected_augment"]:
            return AugmentScore.from_dict(s)
    return None


class Setting:
    """The fixed-DA and auto runs of one (data set, model, quantizer, bits, KD) setting."""

    def __init__(self, key: tuple, runs: list[dict]):
        self.key = key
        self.auto = [r for r in runs if trained_da(r) == "auto"]
        self.acc: dict[str, dict[int, float]] = defaultdict(dict)  # DA -> seed -> accuracy (%)
        self.scores: dict[str, dict[int, AugmentScore]] = defaultdict(dict)  # DA -> seed -> its scores
        for r in runs:
            da = trained_da(r)
            if da == "auto":
                continue
            seed = r["config"]["seed"]
            self.acc[da][seed] = 100 * r["student"]["test_acc"]
            s = own_score(r)
            if s is not None:
                self.scores[da][seed] = s
        self.das = sorted(self.acc, key=lambda d: -statistics.mean(self.acc[d].values()))

    @property
    def name(self) -> str:
        return " / ".join(map(str, self.key))

    def mean_acc(self, da: str, seeds: Sequence[int] | None = None) -> float:
        vals = [self.acc[da][s] for s in (seeds if seeds is not None else self.acc[da]) if s in self.acc[da]]
        return statistics.mean(vals) if vals else math.nan

    def mean_score(self, da: str, selector: str, seeds: Sequence[int] | None = None) -> float:
        vals = [selector_value(self.scores[da][s], selector) for s in (seeds if seeds is not None else self.scores[da])
                if s in self.scores[da]]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.mean(vals) if vals else math.nan

    def scored(self, selector: str) -> list[str]:
        return [d for d in self.das if not math.isnan(self.mean_score(d, selector))]

    def selector_row(self, selector: str, draws: int = 1000, seed: int = 0) -> dict | None:
        das = self.scored(selector)
        if len(das) < 3:  # a rank correlation needs at least three DAs
            return None
        rho = spearman([self.mean_score(d, selector) for d in das], [self.mean_acc(d) for d in das])
        seeds = sorted({s for d in das for s in self.acc[d]})
        rng, boot = random.Random(seed), []
        for _ in range(draws):  # resample seeds (the replicated unit), recompute every mean
            pick = [rng.choice(seeds) for _ in seeds]
            xs = [self.mean_score(d, selector, pick) for d in das]
            ys = [self.mean_acc(d, pick) for d in das]
            ok = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
            if len(ok) >= 3:
                r = spearman([x for x, _ in ok], [y for _, y in ok])
                if not math.isnan(r):
                    boot.append(r)
        boot.sort()
        lo, hi = (boot[int(0.05 * (len(boot) - 1))], boot[int(0.95 * (len(boot) - 1))]) if boot else (math.nan, math.nan)
        picked = min(das, key=lambda d: self.mean_score(d, selector))
        best = max(das, key=self.mean_acc)
        by_acc = sorted(das, key=lambda d: -self.mean_acc(d))
        return {"selector": selector, "rho": rho, "lo": lo, "hi": hi, "pick": picked, "rank": by_acc.index(picked) + 1,
                "of": len(das), "regret": self.mean_acc(best) - self.mean_acc(picked)}

    def spreads(self) -> tuple[float, float]:
        """(mean std across seeds within a DA, std across the DAs' mean accuracies)."""
        within = [statistics.stdev(v.values()) for v in self.acc.values() if len(v) > 1]
        between = [self.mean_acc(d) for d in self.das]
        return (statistics.mean(within) if within else math.nan), (statistics.stdev(between) if len(between) > 1 else math.nan)


def settings_of(runs: list[dict]) -> list[Setting]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[tuple(field(r, f) for f in SETTING)].append(r)
    return [Setting(k, v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))]


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
    rows = [row for s in SELECTORS if (row := st.selector_row(s))]
    if rows:
        lines += ["| selector | Spearman ρ (score, accuracy) | 90 % interval (seeds) | pick | rank of pick | regret (points) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(f"| {r['selector']} | {r['rho']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['pick']} | "
                         f"{r['rank']} of {r['of']} | {r['regret']:.2f} |")
        lines += ["", "ρ < 0 means a lower score went with a higher accuracy: the selector ranks as hoped.", ""]
    within, between = st.spreads()
    if not math.isnan(within) and not math.isnan(between):
        verdict = ("smaller than" if within < between else "not smaller than")
        lines += [f"Seed-to-seed spread (mean std within a DA) {within:.2f} points is {verdict} the spread between DAs "
                  f"(std of the DAs' means) {between:.2f} points"
                  + ("." if within < between else ": at this budget the DAs cannot be told apart."), ""]
    if st.auto:
        accs = [100 * r["student"]["test_acc"] for r in st.auto]
        picks = ", ".join(sorted({r["selected_augment"] for r in st.auto}))
        line = f"auto ({picks}): {cell(accs)}"
        if st.das:
            best, worst = st.das[0], st.das[-1]
            line += f"; best fixed {best} {st.mean_acc(best):.2f}, worst fixed {worst} {st.mean_acc(worst):.2f}"
        lines += [line, ""]
    return "\n".join(lines), rows


def scatter(settings: list[Setting], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [st for st in settings if st.scored("m")]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.5), squeeze=False)
    markers = dict(zip(SELECTORS, "osD^v<>ph*"))
    for ax, st in zip(axes[0], shown):
        das = st.scored("m")
        for d in das:
            ms = [selector_value(s, "m") for s in st.scores[d].values()]
            accs = list(st.acc[d].values())
            ax.errorbar(statistics.mean(ms), statistics.mean(accs), xerr=mean_std(ms)[1], yerr=mean_std(accs)[1],
                        fmt="o", color="tab:blue", capsize=3)
            ax.annotate(d, (statistics.mean(ms), statistics.mean(accs)), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for i, sel in enumerate(SELECTORS):
            row = st.selector_row(sel, draws=1)
            if row:
                d = row["pick"]
                ax.scatter([st.mean_score(d, "m")], [st.mean_acc(d)], s=160 + 60 * i, facecolors="none",
                           edgecolors=f"C{i + 1}", marker=markers[sel], label=f"pick of {sel}")
        ax.set_xlabel("M = DEV − CMI (mean over seeds; lower is predicted better)")
        ax.set_ylabel("student test accuracy, %")
        ax.set_title(st.name, fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the plain pivot


def pivot(runs: list[dict], rows: str, cols: str, metric: str) -> tuple[list, list, dict]:
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
    ap.add_argument("--wandb", action="store_true", help="log the tables and scatter.png to a W&B summary run of the sweep's group "
                    "(offline without an API key: make sync uploads it)")
    ap.add_argument("--plot", action="store_true", help="kept for compatibility: scatter.png is always written when matplotlib is there")
    args = ap.parse_args(argv)

    runs, failed = load_results(args.folders)
    if not runs:
        print(f"no finished results.json under {', '.join(map(str, args.folders))}"
              + (f" ({len(failed)} failed jobs)" if failed else ""), file=sys.stderr)
        return 1
    settings = settings_of(runs)
    parts = [f"# Sweep report: {len(runs)} runs" + (f", {len(failed)} failed and left out" if failed else "")]
    for r in failed:
        parts.append(f"- failed: {Path(r['_path']).parent} — {r.get('error', '?')}")
    csv_rows = []
    for st in settings:
        text, rows = setting_markdown(st)
        parts.append(text)
        csv_rows += [{"setting": st.name, **r} for r in rows]
    if args.rows:
        row_keys, col_keys, table = pivot(runs, args.rows, args.cols, args.metric)
        parts.append(f"## {args.metric} by {args.rows} × {args.cols}\n\n" + pivot_markdown(row_keys, col_keys, table, args.rows))
    text = "\n\n".join(parts) + "\n"
    print(text)
    out = args.folders[0]
    (out / "report.md").write_text(text)
    with open(out / "report.csv", "w", newline="") as f:
        keys = ["setting", "selector", "rho", "lo", "hi", "pick", "rank", "of", "regret"]
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(csv_rows)
    try:
        scatter(settings, out / "scatter.png")
    except ImportError:
        print("matplotlib is not installed: no scatter.png (pip install matplotlib)", file=sys.stderr)
    if args.wandb:
        from daqkd.wandb_setup import log_sweep_summary

        keys = ["setting", "selector", "rho", "lo", "hi", "pick", "rank", "of", "regret"]
        runs_table = [[str(Path(r["_path"]).parent), field(r, "augment"), field(r, "selected"), field(r, "seed"), field(r, "test_acc")]
                      for r in runs]
        where = log_sweep_summary(out, {"selectors": (keys, [[row.get(k) for k in keys] for row in csv_rows]),
                                        "runs": (["run", "augment", "selected", "seed", "test_acc"], runs_table)},
                                  {"scatter": out / "scatter.png"})
        print(f"W&B summary run: {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
