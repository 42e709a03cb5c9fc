"""The command: ``python -m daqkd.report FOLDER ...`` (the package's docstring says what it reports)."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from daqkd.errors import reported_as_one_line
from daqkd.report.figures import budget_plot, scatter
from daqkd.report.runs import FIELDS, field, load_results, where
from daqkd.report.settings import budget_families, settings_of
from daqkd.report.tables import (
    PAIRED_COLUMNS,
    SELECTOR_COLUMNS,
    budget_markdown,
    paired_records,
    pivot,
    pivot_markdown,
    selector_records,
    setting_markdown,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.report", description=sys.modules["daqkd.report"].__doc__.splitlines()[0])
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
        parts.append(f"- failed: {where(r)} — {r.error or '?'}")
    for family in families:
        parts.append(budget_markdown(family) + "\nFigure: budget.png.\n")
    for st in settings:
        parts.append(setting_markdown(st))
    csv_rows = [row for st in settings for row in selector_records(st)]
    paired_rows = [row for st in settings for row in paired_records(st)]
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
    keys = SELECTOR_COLUMNS
    for name, columns, rows in (("report.csv", SELECTOR_COLUMNS, csv_rows), ("paired.csv", PAIRED_COLUMNS, paired_rows)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    if args.wandb:
        from daqkd.wandb_setup import log_sweep_summary

        runs_table = [[where(r), field(r, "augment"), field(r, "selected"), field(r, "seed"), field(r, "test_acc")]
                      for r in runs]
        summary = log_sweep_summary(out, {"selectors": (keys, [[row.get(k) for k in keys] for row in csv_rows]),
                                          "runs": (["run", "augment", "selected", "seed", "test_acc"], runs_table)}, figures)
        print(f"W&B summary run: {summary}", file=sys.stderr)
    return 0

