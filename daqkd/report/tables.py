"""The report's text: a setting's tables, a budget curve's tables, the plain pivot, and where the
results came from (their commits). Markdown; every figure beside the number that supports it."""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence

from daqkd.metric.scoring import SELECTORS
from daqkd.report.runs import field
from daqkd.report.settings import BASELINE, AutoRow, SelectorRow, Setting, family_name
from daqkd.result import RunResult
from daqkd.significance import MIN_SEEDS_BOOTSTRAP, Paired, format_p


def cell(values: Sequence[float]) -> str:
    """``mean ± SD (n=k)``; one value alone has no SD: ``86.09 (n=1)``."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def diff_cell(p: Paired) -> str:
    """``+0.12 ± 0.10 (p 0.50, n=3)``; one seed: ``+0.12 (n=1: no SE, no p)``; none: ``–``."""
    if p.n == 0:
        return "–"
    if p.n == 1:
        return f"{p.mean:+.2f} (n=1: no SE, no p)"
    return f"{p.mean:+.2f} ± {p.se:.2f} (p {format_p(p.p)}, n={p.n})"


def rho_cell(row: SelectorRow) -> str:
    r = row.rho
    if math.isnan(r.rho):
        return "– (a constant score ranks nothing)"
    p = f"p {format_p(r.p)}" + ("" if r.exact else " MC")
    return f"{r.rho:+.2f} ({p})"


def per_seed_cell(row: SelectorRow) -> str:
    r = row.rho
    if not r.per_seed or math.isnan(r.per_seed_mean):
        return "–"
    if len(r.per_seed) == 1 or math.isnan(r.per_seed_sd):
        return f"{r.per_seed_mean:+.2f} ({len(r.per_seed)} seed{'s' if len(r.per_seed) > 1 else ''})"
    return f"{r.per_seed_mean:+.2f} ± {r.per_seed_sd:.2f} ({len(r.per_seed)} seeds)"


def least_p_note(seeds: int) -> str:
    if seeds == 1:
        return "With 1 seed there is no paired p (one difference has no spread)."
    return (f"With {seeds} seeds no paired p can be below {min(1.0, 2 / 2 ** seeds):.2g} (2/2^{seeds} of the sign patterns)."
            if seeds else "")


def commits_line(runs: Sequence[RunResult]) -> str:
    """Each commit the runs were made at, with its count; runs from a tree with uncommitted changes flagged."""
    counts = Counter(str(r.provenance.get("git_commit") or "unknown") for r in runs)
    parts = [f"{c[:12] + ('+dirty' if c.endswith('+dirty') else '') if c != 'unknown' else 'unknown'} ×{n}" for c, n in counts.most_common()]
    dirty = sum(n for c, n in counts.items() if c.endswith("+dirty"))
    line = "Commits: " + ", ".join(parts) + "."
    if dirty:
        line += (f" **{dirty} of {len(runs)} runs came from a tree with uncommitted changes**: their code is not any commit's, "
                 "and they cannot be reproduced from the repository.")
    if counts.get("unknown"):
        line += f" {counts['unknown']} runs recorded no commit (run outside a git checkout)."
    return line


def auto_table(rows: Sequence[AutoRow]) -> list[str]:
    if not rows:
        return []
    lines = ["| augment=auto | picks | test acc % | − minimal (paired) | − best fixed DA (paired; chosen after the fact) |",
             "| --- | --- | --- | --- | --- |"]
    for a in rows:
        picks = ", ".join(f"{d} ×{n}" for d, n in sorted(a.picks.items(), key=lambda x: -x[1]))
        sel = f" ({a.selector})" if a.selector else ""
        lines.append(f"| {a.label}{sel} | {picks} | {a.acc:.2f} (n={a.seeds}) | {diff_cell(a.vs_minimal)} | "
                     f"{a.best}: {diff_cell(a.vs_best)} |")
    return lines + [""]


def setting_markdown(st: Setting) -> str:
    lines = [f"## {st.name}", "", commits_line(st.runs), ""]
    sels = [s for s in SELECTORS if st.scored(s)]
    seeds = sorted({s for v in st.acc.values() for s in v})
    if st.das:
        more = any(len(st.acc[d]) > len(st.block) for d in st.das)
        lines += [f"| DA | test acc % (mean ± SD over the {len(st.block)} seed{'s' if len(st.block) != 1 else ''} every DA has"
                  + ("; all its seeds" if more else "") + ") | − minimal, paired by seed (± SE, sign-flip p, seeds) | " + " | ".join(sels) + " |",
                  "|" + " --- |" * (3 + len(sels))]
        for d in st.das:
            vs = "–" if d == BASELINE else diff_cell(st.versus(d))
            acc = cell([st.acc[d][s] for s in st.block if s in st.acc[d]])
            if len(st.acc[d]) > len(st.block):
                acc += f"; {cell(list(st.acc[d].values()))}"
            lines.append(f"| {d} | {acc} | {vs} | " + " | ".join(f"{st.mean_score(d, s):+.4f}" for s in sels) + " |")
        lines += ["", least_p_note(len(st.block)), ""]
        if not sels:
            lines += ["No selector scores recorded (the runs had metric.score_fixed=false): no selector table.", ""]
        joint = st.joint()
        if joint:
            how = f"all {joint.draws:,} within-seed permutations" if joint.exact else f"{joint.draws:,} random within-seed permutations"
            lines += [f"Do the DAs differ at all? The DA labels permuted within each seed, all DAs at once: p {format_p(joint.p)} "
                      f"({how}; {joint.seeds} seeds, {joint.das} DAs).", ""]
        sp = st.spread()
        if sp:
            lines += [f"Where the spread comes from ({sp.seeds} seeds × {sp.das} DAs, additive): seed offsets SD {sp.seed_sd:.2f}, "
                      f"DA effects SD {sp.da_sd:.2f}, residual SD {sp.residual_sd:.2f} points. The seed offset is shared by every "
                      f"DA of a seed and cancels in a paired difference, whose SD is about √2 × {sp.residual_sd:.2f} = "
                      f"{math.sqrt(2) * sp.residual_sd:.2f} points.", ""]
        elif len(seeds) < 2:
            lines += ["Spread and paired tests left out: they need at least two seeds.", ""]
    rows = [row for s in SELECTORS if (row := st.selector_row(s))]
    if rows:
        boot = any(r.rho.bootstrap for r in rows)
        lines += ["| selector | ρ(score, accuracy) (exact p) | ρ within each seed (mean ± SD) | "
                  + ("90 % bootstrap over seeds | " if boot else "") + "pick | rank of pick | regret (points) |",
                  "| --- | --- | --- | " + ("--- | " if boot else "") + "--- | --- | --- |"]
        for r in rows:
            b = (f"[{r.rho.bootstrap[0]:+.2f}, {r.rho.bootstrap[1]:+.2f}] | " if r.rho.bootstrap else "– | ") if boot else ""
            lines.append(f"| {r.selector} | {rho_cell(r)} | {per_seed_cell(r)} | {b}{r.pick} | {r.rank} of {r.of} | {r.regret:.2f} |")
        n = rows[0].rho.n_items
        how = (f"exact over all {math.factorial(n):,} orderings of the {n} DAs" if rows[0].rho.exact
               else f"from 100,000 random orderings of the {n} DAs (MC)")
        lines += ["", f"ρ < 0 means a lower score went with a higher accuracy: the selector ranks as hoped. Its p is {how}. "
                  f"A bootstrap over seeds is shown only from {MIN_SEEDS_BOOTSTRAP} seeds. A pick's ties go to the first DA in "
                  "pool order.", ""]
    elif sels:
        lines += [f"Selector table left out: a rank correlation needs at least 3 scored DAs, this setting has "
                  f"{max(len(st.scored(s)) for s in sels)}.", ""]
    autos = st.auto_rows() + ([replay] if (replay := st.rule_row()) else [])
    lines += auto_table(autos)
    return "\n".join(lines)


def budget_markdown(family: list[Setting]) -> str:
    epochs = [st.epochs for st in family]
    head = "| | " + " | ".join(f"{e} epochs" for e in epochs) + " |"
    rule = "| --- |" + " --- |" * len(epochs)
    lines = [f"## Budget curve: {family_name(family)}", "", commits_line([r for st in family for r in st.runs]), ""]
    das = []
    for st in family:
        das += [d for d in st.pool if d not in das]
    lines += ["Each DA against minimal, paired by seed: mean difference ± its SE (points), exact sign-flip p, seeds.", "", head, rule]
    for d in das:
        if d == BASELINE:
            lines.append("| minimal (test acc %, all its seeds) | " + " | ".join(cell(list(st.acc[d].values())) for st in family) + " |")
            continue
        lines.append(f"| {d} | " + " | ".join(diff_cell(st.versus(d)) for st in family) + " |")
    autos = defaultdict(dict)
    for st in family:
        for a in st.auto_rows() + ([r] if (r := st.rule_row()) else []):
            autos[a.label][st.epochs] = a
    for label, by_e in autos.items():
        lines.append(f"| **{label}** − minimal | " + " | ".join(
            (f"{diff_cell(by_e[e].vs_minimal)}; picks {', '.join(f'{d} ×{n}' for d, n in by_e[e].picks.items())}" if e in by_e else "–")
            for e in epochs) + " |")
        lines.append(f"| **{label}** − best fixed DA | " + " | ".join(
            (f"{by_e[e].best}: {diff_cell(by_e[e].vs_best)}" if e in by_e else "–") for e in epochs) + " |")
    joint = [st.joint() for st in family]
    spreads = [st.spread() for st in family]
    lines.append("| DAs differ at all? (within-seed permutation p) | " + " | ".join(
        f"p {format_p(j.p)} ({j.seeds} seeds)" if j else "–" for j in joint) + " |")
    lines.append("| SD of seed offsets / DA effects / residual (points) | " + " | ".join(
        f"{s.seed_sd:.2f} / {s.da_sd:.2f} / {s.residual_sd:.2f}" if s else "–" for s in spreads) + " |")
    lines.append("")
    sel_lines = []
    for sel in SELECTORS:
        cells = []
        for st in family:
            r = st.selector_row(sel)
            cells.append(f"{rho_cell(r)} · {r.regret:.2f} ({r.pick})" if r else "–")
        if any(c != "–" for c in cells):
            sel_lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    if sel_lines:
        lines += ["Each selector: Spearman ρ(score, mean accuracy) over the DAs with its exact permutation p, and the regret "
                  "(points) of its pick (the pick):", "", head, rule, *sel_lines, ""]
    return "\n".join(lines)


SELECTOR_COLUMNS = ["setting", "epochs", "selector", "rho", "p", "rho_seed_mean", "rho_seed_sd", "pick", "rank", "of", "regret"]
PAIRED_COLUMNS = ["setting", "epochs", "da", "vs", "mean", "se", "p", "n"]


def selector_records(st: Setting) -> list[dict]:
    """The selector table of a setting as CSV rows (report.csv)."""
    return [{"setting": st.name, "epochs": st.epochs, "selector": r.selector, "rho": r.rho.rho, "p": r.rho.p,
             "rho_seed_mean": r.rho.per_seed_mean, "rho_seed_sd": r.rho.per_seed_sd, "pick": r.pick, "rank": r.rank, "of": r.of,
             "regret": r.regret} for sel in SELECTORS if (r := st.selector_row(sel))]


def paired_records(st: Setting) -> list[dict]:
    """Every paired comparison of a setting as CSV rows (paired.csv): each DA and auto against
    minimal, auto against the best fixed DA."""
    out = [{"setting": st.name, "epochs": st.epochs, "da": d, "vs": BASELINE, "mean": p.mean, "se": p.se, "p": p.p, "n": p.n}
           for d in st.pool if d != BASELINE and (p := st.versus(d)).n]
    for a in st.auto_rows() + ([r] if (r := st.rule_row()) else []):
        for vs, p in ((BASELINE, a.vs_minimal), (a.best, a.vs_best)):
            out.append({"setting": st.name, "epochs": st.epochs, "da": a.label, "vs": vs, "mean": p.mean, "se": p.se, "p": p.p, "n": p.n})
    return out


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
