"""The report's figures: ``budget.png`` (each selector's ρ and regret against the budget, and
augment=auto's) and ``scatter.png`` (accuracy against M, one panel per setting). matplotlib only here."""
from __future__ import annotations

import statistics
from pathlib import Path

from daqkd.metric.scoring import SELECTORS, selector_value
from daqkd.report.settings import Setting, family_name


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


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
            rho = [r.rho.rho for _, r in pts]
            # Bars: the range of ρ within single seeds (not a confidence interval); hollow: p ≥ 0.05.
            lo = [r.rho.rho - min(r.rho.per_seed.values(), default=r.rho.rho) for _, r in pts]
            hi = [max(r.rho.per_seed.values(), default=r.rho.rho) - r.rho.rho for _, r in pts]
            marker = "os^v<>Dph*"[i % 10]
            ax_rho.errorbar(es, rho, yerr=[[max(v, 0) for v in lo], [max(v, 0) for v in hi]], fmt="none", capsize=3, color=f"C{i}",
                            alpha=0.6)
            ax_rho.plot(es, rho, color=f"C{i}", lw=1)
            for e, r in zip(es, (r for _, r in pts)):
                ax_rho.plot([e], [r.rho.rho], marker=marker, color=f"C{i}", markerfacecolor=f"C{i}" if r.rho.p < 0.05 else "white")
            ax_reg.plot(es, [r.regret for _, r in pts], marker=marker, color=f"C{i}", label=sel)
        for kind in ("auto", "replay"):
            rows = [(st.epochs, a) for st in family for a in (st.auto_rows() if kind == "auto" else [x for x in [st.rule_row()] if x])]
            if rows:
                ax_reg.plot([e for e, _ in rows], [-a.vs_best.mean for _, a in rows], "k-" if kind == "auto" else "k--", marker="*",
                            markersize=10, label="augment=auto, real runs" if kind == "auto" else "the shipped rule, replayed")
        for ax in (ax_rho, ax_reg):
            ax.set_xscale("log", base=2)
            ax.set_xticks(epochs, [str(e) for e in epochs])
            ax.set_xlabel("student epochs (log scale)")
        ax_rho.axhline(0, color="grey", lw=0.8)
        ax_rho.set_ylabel("Spearman ρ(score, accuracy)\nbelow 0: the selector ranks as hoped")
        ax_rho.set_title(f"{family_name(family)}\nfilled: exact permutation p < 0.05; hollow: not; bars: range of ρ within single "
                         "seeds; colours as in the legend on the right", fontsize=8)
        ax_reg.set_ylabel("regret of the pick (points)\nbest DA's accuracy − pick's (auto: − its paired difference)")
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
            x, y = statistics.fmean(ms), statistics.fmean(accs)
            ax.errorbar(x, y, xerr=_sd(ms), yerr=_sd(accs), fmt="o", color="tab:blue", capsize=3)
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
        ax.set_title(st.name + "\nbars: ±1 SD over seeds (0 with one seed)" + ("" if picked else "; no picks: fewer than 3 scored DAs"), fontsize=8)
        if picked:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
