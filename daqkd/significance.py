"""Statistics of a sweep's accuracies that hold with few seeds: pure functions of numbers, no files, no
plots. The report (``python -m daqkd.report``), the README's tables and the rule's evidence use them.
(``daqkd.stats`` is another thing: the command that measures a data set's mean and std.)

The unit of replication is the seed. Runs of one seed share its teacher, its order of the data and
its draws, so every DA of a seed carries the same offset: DAs are compared **paired by seed**, and
a comparison is only as sure as the number of seeds allows.

- :func:`paired` — a DA against another: the mean of the per-seed differences, its standard error
  over seeds, and the exact two-sided sign-flip permutation p over all 2ⁿ sign patterns. With n seeds
  p is never below 2/2ⁿ (3 seeds: 0.25; 8 seeds: 0.0078), which :attr:`Paired.p_min` says.
- :func:`joint_test` — do the DAs differ at all at this budget? The DA labels are permuted within
  each seed (the seed's offset stays), all DAs at once, with the spread of the DAs' seed-centred means
  as the statistic. Exact over every permutation when there are few, else a seeded Monte Carlo
  sample of them, with p = (1 + as extreme) / (1 + draws), which is never below its nominal size.
- :func:`rank_correlation` — Spearman's ρ between a selector's score and the DAs' mean accuracy,
  with its exact two-sided permutation p over all n! orderings of the DAs (Monte Carlo above 9 DAs),
  ρ within each seed and its spread, and a bootstrap over seeds only where there are at least 10
  seeds (:data:`MIN_SEEDS_BOOTSTRAP`): with 3 seeds there are 27 resamples and no interval to speak of.
- :func:`spread` — the two-way additive decomposition of a complete seeds × DAs table: the SD of the
  seeds' offsets, the SD of the DAs' effects, and the residual SD that paired comparisons are
  measured against.
"""
from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_SEEDS_BOOTSTRAP = 10  # below this, no bootstrap over seeds is reported
EXACT_LIMIT = 200_000  # enumerate every permutation up to this many; sample beyond
TOL = 1e-9  # statistics this close to the observed one count as "as extreme" (float sums in other orders)


# ----------------------------------------------------------------------------- ranks and ρ


def ranks(values: Sequence[float]) -> list[float]:
    """0-based ranks, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (ties averaged); NaN when either is constant."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else math.nan


def _pearson_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson's r of ``x`` [n] with every row of ``ys`` [k, n]."""
    xc = x - x.mean()
    yc = ys - ys.mean(1, keepdims=True)
    den = np.sqrt((xc**2).sum() * (yc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (yc @ xc) / den


@lru_cache(maxsize=16)
def _all_orderings(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64)


def spearman_p(xs: Sequence[float], ys: Sequence[float], draws: int = 100_000, seed: int = 0) -> tuple[float, bool]:
    """(two-sided permutation p of Spearman's ρ, exact?): the share of orderings of ``ys`` whose |ρ|
    is at least the observed one, over all n! orderings (n ≤ 9: exact) or ``draws`` seeded random ones
    (then (1 + as extreme) / (1 + draws)). Ties are kept as average ranks."""
    n = len(xs)
    rho = spearman(xs, ys)
    if n < 3 or math.isnan(rho):
        return math.nan, True
    rx, ry = np.array(ranks(xs)), np.array(ranks(ys))
    if math.factorial(n) <= EXACT_LIMIT:
        null = _pearson_rows(rx, ry[_all_orderings(n)])
        return float(np.mean(np.abs(null) >= abs(rho) - TOL)), True
    gen = np.random.default_rng(seed)
    perms = np.argsort(gen.random((draws, n)), axis=1)
    null = _pearson_rows(rx, ry[perms])
    return float((1 + np.sum(np.abs(null) >= abs(rho) - TOL)) / (1 + draws)), False


@dataclass
class RankCorrelation:
    """ρ between a selector's score (mean over seeds) and the DAs' mean accuracy."""

    rho: float
    p: float
    exact: bool
    n_items: int
    per_seed: dict[int, float]  # ρ within each seed (that seed's scores against that seed's accuracies)
    bootstrap: tuple[float, float] | None  # a 90 % percentile interval over seeds, only with ≥ MIN_SEEDS_BOOTSTRAP seeds

    @property
    def per_seed_mean(self) -> float:
        vals = [v for v in self.per_seed.values() if not math.isnan(v)]
        return statistics.fmean(vals) if vals else math.nan

    @property
    def per_seed_sd(self) -> float:
        vals = [v for v in self.per_seed.values() if not math.isnan(v)]
        return statistics.stdev(vals) if len(vals) > 1 else math.nan


def rank_correlation(score: Mapping[str, Mapping[int, float]], acc: Mapping[str, Mapping[int, float]], draws: int = 2000,
                     seed: int = 0) -> RankCorrelation | None:
    """ρ(score, accuracy) across the DAs that have both, from per-DA, per-seed values
    (``score[da][seed]``, ``acc[da][seed]``); None with fewer than 3 DAs."""
    das = [d for d in score if d in acc and score[d] and acc[d]]
    if len(das) < 3:
        return None
    xs = [statistics.fmean(score[d].values()) for d in das]
    ys = [statistics.fmean(acc[d].values()) for d in das]
    rho = spearman(xs, ys)
    p, exact = spearman_p(xs, ys)
    seeds = sorted(set.intersection(*(set(score[d]) & set(acc[d]) for d in das)))
    per_seed = {s: spearman([score[d][s] for d in das], [acc[d][s] for d in das]) for s in seeds}
    boot = None
    if len(seeds) >= MIN_SEEDS_BOOTSTRAP:
        rng, values = random.Random(seed), []
        for _ in range(draws):
            chosen = [rng.choice(seeds) for _ in seeds]
            r = spearman([statistics.fmean(score[d][s] for s in chosen) for d in das],
                         [statistics.fmean(acc[d][s] for s in chosen) for d in das])
            if not math.isnan(r):
                values.append(r)
        values.sort()
        if values:
            boot = (values[int(0.05 * (len(values) - 1))], values[int(0.95 * (len(values) - 1))])
    return RankCorrelation(rho, p, exact, len(das), per_seed, boot)


# ----------------------------------------------------------------------------- paired by seed


@dataclass
class Paired:
    """``a − b`` paired by seed."""

    mean: float
    se: float  # the standard error of the mean difference over seeds (NaN with one seed)
    p: float  # exact two-sided sign-flip p over all 2ⁿ sign patterns
    n: int  # seeds with both

    @property
    def p_min(self) -> float:
        """The smallest two-sided p that n seeds allow (the observed pattern and its mirror): 2/2ⁿ."""
        return min(1.0, 2.0 / 2**self.n) if self.n else math.nan

    def text(self, unit: str = "") -> str:
        """``+0.30 ± 0.12 pt (p 0.031, 8 seeds)``; with one seed ``+0.30 pt (1 seed: no SE, no p)``."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:+.2f}{unit} (1 seed: no SE, no p)"
        return f"{self.mean:+.2f} ± {self.se:.2f}{unit} (p {format_p(self.p)}, {self.n} seeds)"


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p of the mean of ``diffs``: under "no difference" each
    difference is as likely negated, so each of the 2ⁿ sign patterns is equally likely; p is the share
    of patterns whose |sum| is at least the observed |sum|."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    if n > 24:
        raise ValueError(f"sign_flip_p enumerates 2^{n} patterns; pass at most 24 differences")
    patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # every ± pattern [2ⁿ, n]
    sums = np.abs(patterns @ d)
    return float(np.mean(sums >= abs(d.sum()) - TOL * max(1.0, np.abs(d).sum())))


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """``a − b`` over the seeds both have (``a[seed]``, ``b[seed]``)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return Paired(math.nan, math.nan, math.nan, 0)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return Paired(statistics.fmean(diffs), se, sign_flip_p(diffs), len(diffs))


def format_p(p: float) -> str:
    """p with the digits that matter: 0.25, 0.031, 0.0078, < 0.001."""
    if math.isnan(p):
        return "–"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


# ----------------------------------------------------------------------------- all DAs at once


@dataclass
class JointTest:
    statistic: float
    p: float
    exact: bool
    draws: int  # permutations counted (all of them when exact)
    seeds: int
    das: int


def _centred(table: Mapping[int, Mapping[str, float]], das: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per seed: (its DAs' indices, its values less the seed's mean), seeds with at least two DAs."""
    out = []
    for seed in sorted(table):
        row = [(i, table[seed][d]) for i, d in enumerate(das) if d in table[seed]]  # in the order of das, whatever the runs' order
        if len(row) >= 2:
            idx, vals = np.array([i for i, _ in row]), np.array([v for _, v in row], dtype=np.float64)
            out.append((idx, vals - vals.mean()))
    return out


def _joint_statistic(labels: np.ndarray, values: np.ndarray, n_das: int) -> np.ndarray:
    """Σ_d n_d·(mean seed-centred value of DA d)² for each row of labels/values [k, m]."""
    sums = np.zeros((labels.shape[0], n_das))
    counts = np.zeros(n_das)
    np.add.at(counts, labels[0], 1)
    rows = np.arange(labels.shape[0])[:, None]
    np.add.at(sums, (np.broadcast_to(rows, labels.shape), labels), values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(np.where(counts > 0, sums**2 / counts, 0.0), axis=1)


def joint_test(table: Mapping[int, Mapping[str, float]], draws: int = 20_000, seed: int = 0) -> JointTest | None:
    """Do the DAs differ at all? ``table[seed][da]`` = accuracy. Under "the DA makes no difference",
    the DAs' labels are exchangeable within each seed; the statistic Σ_d n_d·(mean seed-centred
    accuracy of d)² is compared with its value under every within-seed permutation (exact when their
    number is at most EXACT_LIMIT, else ``draws`` seeded random ones). Every run of the table is
    used, seeds with fewer DAs included. None with fewer than 2 DAs or no seed holding two."""
    das = sorted({d for row in table.values() for d in row})
    rows = _centred(table, das)
    if len(das) < 2 or not rows:
        return None
    labels = np.concatenate([idx for idx, _ in rows])
    values = np.concatenate([v for _, v in rows])
    observed = float(_joint_statistic(labels[None], values[None], len(das))[0])
    total = math.prod(math.factorial(len(idx)) for idx, _ in rows)
    if total <= EXACT_LIMIT:
        perms = [np.array(list(itertools.permutations(range(len(idx))))) for idx, _ in rows]
        combos = np.array(list(itertools.product(*[range(len(p)) for p in perms])))  # [total, seeds]
        all_labels = np.concatenate([rows[j][0][perms[j][combos[:, j]]] for j in range(len(rows))], axis=1)
        null = _joint_statistic(all_labels, np.broadcast_to(values, all_labels.shape), len(das))
        return JointTest(observed, float(np.mean(null >= observed - TOL)), True, int(total), len(rows), len(das))
    gen = np.random.default_rng(seed)
    null = np.empty(draws)
    done = 0
    while done < draws:  # in blocks, to bound memory
        k = min(5000, draws - done)
        block = np.concatenate([idx[np.argsort(gen.random((k, len(idx))), axis=1)] for idx, _ in rows], axis=1)
        null[done:done + k] = _joint_statistic(block, np.broadcast_to(values, block.shape), len(das))
        done += k
    p = (1 + np.sum(null >= observed - TOL)) / (1 + draws)
    return JointTest(observed, float(p), False, draws, len(rows), len(das))


# ----------------------------------------------------------------------------- where the spread comes from


@dataclass
class Spread:
    """A complete seeds × DAs table, decomposed additively: value = grand + seed offset + DA effect + residual."""

    seed_sd: float  # SD of the seeds' means over the DAs (each seed's offset, shared by its DAs)
    da_sd: float  # SD of the DAs' means over the seeds
    residual_sd: float  # √(SS_residual / ((S−1)(D−1))): what a paired comparison is measured against
    seeds: int
    das: int


def spread(table: Mapping[int, Mapping[str, float]]) -> Spread | None:
    """The decomposition over a complete block: every DA at the seeds that have them all (when some
    DAs ran at more seeds, those extra runs are left out), else the DAs every seed has; None with
    fewer than 2 seeds or 2 DAs in the block."""
    every = sorted({d for r in table.values() for d in r})
    seeds = [s for s in sorted(table) if all(d in table[s] for d in every)]
    das = every
    if len(seeds) < 2:
        das = sorted(set.intersection(*(set(r) for r in table.values()))) if table else []
        seeds = [s for s in sorted(table) if all(d in table[s] for d in das)]
    if len(seeds) < 2 or len(das) < 2:
        return None
    x = np.array([[table[s][d] for d in das] for s in seeds], dtype=np.float64)
    grand = x.mean()
    seed_means, da_means = x.mean(1), x.mean(0)
    resid = x - seed_means[:, None] - da_means[None, :] + grand
    dof = (len(seeds) - 1) * (len(das) - 1)
    return Spread(float(np.std(seed_means, ddof=1)), float(np.std(da_means, ddof=1)), float(math.sqrt((resid**2).sum() / dof)),
                  len(seeds), len(das))
