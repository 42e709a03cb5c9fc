"""Turn sweeps into tables: ``python -m daqkd.report multirun/<sweep> [more dirs] --rows quantizer --cols bits``.

Reads every ``results.json`` below the given folders and prints a Markdown pivot table of a metric
(default: the student's test accuracy, in %) as mean ± std over repeated runs (seeds). It also
writes ``report.md`` and ``report.csv`` next to the first folder and, with ``--plot``, a PNG.
When the runs trained with fixed, scored DAs, it reports the Spearman correlation between the
metric M and the accuracy (the DA paper's Table 1).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def field(results: dict, name: str) -> Any:
    if name in FIELDS:
        return FIELDS[name](results)
    value: Any = results
    for part in name.split("."):
        value = value[part]
    return value


def load_results(folders: list[Path]) -> list[dict]:
    runs = []
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist; pass a sweep folder such as multirun/<date_time>")
        for path in sorted(folder.rglob("results.json")):
            try:
                runs.append(json.loads(path.read_text()) | {"_path": str(path)})
            except json.JSONDecodeError as e:
                print(f"skipping unreadable {path}: {e}", file=sys.stderr)
    return runs


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def pivot(runs: list[dict], rows: str, cols: str, metric: str) -> tuple[list, list, dict]:
    table: dict[tuple, list[float]] = defaultdict(list)
    for r in runs:
        table[(field(r, rows), field(r, cols))].append(float(field(r, metric)))
    row_keys = sorted({k[0] for k in table}, key=str)
    col_keys = sorted({k[1] for k in table}, key=str)
    return row_keys, col_keys, table


def markdown(row_keys, col_keys, table, rows: str, metric: str) -> str:
    head = f"| {rows} | " + " | ".join(map(str, col_keys)) + " |"
    lines = [head, "|" + " --- |" * (len(col_keys) + 1)]
    for rk in row_keys:
        lines.append(f"| {rk} | " + " | ".join(cell(table.get((rk, ck), [])) for ck in col_keys) + " |")
    return "\n".join(lines)


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):  # average ranks over ties
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


def metric_correlation(runs: list[dict]) -> str | None:
    """Spearman ρ between M of the DA a run trained with and its test accuracy."""
    pairs, names = [], set()
    for r in runs:
        chosen = [s for s in r.get("augment_scores", []) if s["name"] == r["selected_augment"]]
        if chosen and r["config"]["augment"]["name"] != "auto":
            pairs.append((chosen[0]["m"], r["student"]["test_acc"]))
            names.add(chosen[0]["name"])
    if len(names) < 3:  # a correlation needs M to vary: at least three different DAs
        return None
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return f"Spearman ρ(M, test accuracy) over {len(pairs)} fixed-DA runs: {rho:+.3f} (negative: lower M, higher accuracy)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.report", description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="sweep folders (multirun/<date_time>) or run folders")
    ap.add_argument("--rows", default="quantizer", help=f"field for rows: {', '.join(FIELDS)} or a dotted path")
    ap.add_argument("--cols", default="bits", help="field for columns")
    ap.add_argument("--metric", default="test_acc", help="value in the cells (default: student test accuracy, %%)")
    ap.add_argument("--plot", action="store_true", help="also write report.png (needs matplotlib)")
    args = ap.parse_args(argv)

    runs = load_results(args.folders)
    if not runs:
        print(f"no results.json under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 1
    row_keys, col_keys, table = pivot(runs, args.rows, args.cols, args.metric)
    md = markdown(row_keys, col_keys, table, args.rows, args.metric)
    extra = metric_correlation(runs)
    text = f"{args.metric} by {args.rows} × {args.cols}, {len(runs)} runs\n\n{md}\n" + (f"\n{extra}\n" if extra else "")
    print(text)
    out = args.folders[0]
    (out / "report.md").write_text(text)
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([args.rows, args.cols, "mean", "std", "n"])
        for (rk, ck), vals in sorted(table.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
            w.writerow([rk, ck, statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)])
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(row_keys) * len(col_keys) / 2, 3.5))
        width = 0.8 / max(len(col_keys), 1)
        for j, ck in enumerate(col_keys):
            means = [statistics.mean(table[(rk, ck)]) if table.get((rk, ck)) else 0 for rk in row_keys]
            ax.bar([i + j * width for i in range(len(row_keys))], means, width, label=str(ck))
        ax.set_xticks([i + width * (len(col_keys) - 1) / 2 for i in range(len(row_keys))], [str(r) for r in row_keys])
        ax.set_ylabel(args.metric)
        ax.legend(title=args.cols)
        fig.tight_layout()
        fig.savefig(out / "report.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
