"""daqkd/significance.py against hand computations and on simulated sweeps of known effect: the size
of each test under no effect (≥ 1,000 grids), its power against a planted 0.5-point effect with 8
seeds, and the spread decomposition."""
import itertools
import math
import statistics

import numpy as np
import pytest

from daqkd.significance import (
    Paired,
    format_p,
    joint_test,
    paired,
    rank_correlation,
    sign_flip_p,
    spearman,
    spearman_p,
    spread,
)

DAS = ["minimal", "autoaugment_cifar10", "autoaugment_imagenet", "augmix", "cutmix", "randaugment", "trivialaugment"]


def grid(gen, seeds, effect=None, seed_sd=0.6, resid_sd=0.3, das=DAS):
    """A simulated sweep: accuracy = 85 + the seed's offset + the DA's planted effect + residual noise."""
    effect = effect or {}
    table = {}
    for s in range(seeds):
        offset = gen.normal(0, seed_sd)
        table[s] = {d: 85 + offset + effect.get(d, 0.0) + gen.normal(0, resid_sd) for d in das}
    return table


def column(table, da):
    return {s: row[da] for s, row in table.items() if da in row}


# ----------------------------------------------------------------------------- by hand


def test_sign_flip_p_by_hand():
    # d = (1, 2, 3): |sum| 6; the 8 patterns give |sums| 6, 0, 2, 4, 4, 2, 0, 6 → 2 of 8 at least 6.
    assert sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)
    # d = (1, -2, 3): |sum| 2; patterns' |sums|: ±6 (2), ±2 (from −2's and others) ... count by brute force
    d = [1, -2, 3]
    sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product([1, -1], repeat=3)]
    assert sign_flip_p(d) == pytest.approx(sum(v >= 2 for v in sums) / 8)
    assert sign_flip_p([0.5] * 8) == pytest.approx(2 / 256)  # all the same sign: the least 8 seeds allow


def test_paired_by_hand_and_its_least_p():
    a = {0: 86.0, 1: 85.0, 2: 87.0, 3: 99.0}
    b = {0: 85.5, 1: 84.0, 2: 86.0}  # seed 3 has no partner: left out
    r = paired(a, b)
    diffs = [0.5, 1.0, 1.0]
    assert (r.mean, r.n) == (pytest.approx(statistics.fmean(diffs)), 3)
    assert r.se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3))
    assert r.p == pytest.approx(0.25) and r.p_min == pytest.approx(0.25)  # 3 seeds can never say more than p 0.25
    assert Paired(0.3, math.nan, 1.0, 1).text(" pt") == "+0.30 pt (1 seed: no SE, no p)"
    assert "p 0.25, 3 seeds" in r.text()
    assert [format_p(p) for p in (0.25, 0.031, 0.0078, 0.0004)] == ["0.25", "0.031", "0.0078", "< 0.001"]


def test_spearman_and_its_exact_p_by_hand():
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # n = 4: the 24 orderings of the ranks; |ρ| ≥ 0.6 for orderings with Σd² ≤ 4 or ≥ 16.
    rhos = [spearman([0, 1, 2, 3], list(perm)) for perm in itertools.permutations(range(4))]
    p, exact = spearman_p([1, 2, 3, 4], [2, 1, 4, 3])
    assert exact and p == pytest.approx(sum(abs(r) >= 0.6 - 1e-9 for r in rhos) / 24)
    # The figures for 7 items: |ρ| = 0.36 → p ≈ 0.44, 0.61 → ≈ 0.17, 0.79 → ≈ 0.05 (two-sided).
    x = list(range(7))
    for rho_target, p_target in ((0.357, 0.44), (0.607, 0.17), (0.786, 0.05)):
        y = next(list(perm) for perm in itertools.permutations(range(7)) if abs(spearman(x, list(perm)) - rho_target) < 1e-3)
        assert spearman_p(x, y)[0] == pytest.approx(p_target, abs=0.02)


def test_rank_correlation_per_seed_and_no_bootstrap_below_ten_seeds():
    gen = np.random.default_rng(0)
    score = {d: {s: float(i + gen.normal(0, 0.1)) for s in range(3)} for i, d in enumerate(DAS)}
    acc = {d: {s: float(90 - i + gen.normal(0, 0.1)) for s in range(3)} for i, d in enumerate(DAS)}
    r = rank_correlation(score, acc)
    assert r.rho == pytest.approx(-1.0) and r.p == pytest.approx(2 / 5040) and r.exact
    assert set(r.per_seed) == {0, 1, 2} and r.bootstrap is None
    more = rank_correlation({d: {s: v[0] + s * 0.01 for s in range(10)} for d, v in score.items()},
                            {d: {s: v[0] for s in range(10)} for d, v in acc.items()})
    assert more.bootstrap is not None and more.bootstrap[0] <= more.rho <= more.bootstrap[1]
    assert rank_correlation({"a": {0: 1.0}}, {"a": {0: 1.0}}) is None


def test_spread_decomposition_by_hand():
    # 2 seeds × 3 DAs, exactly additive plus a ±0.1 residual in a checkerboard.
    table = {0: {"a": 85.1, "b": 85.9, "c": 87.0}, 1: {"a": 83.9, "b": 85.1, "c": 86.0}}
    s = spread(table)
    x = np.array([[85.1, 85.9, 87.0], [83.9, 85.1, 86.0]])
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    assert s.residual_sd == pytest.approx(math.sqrt((resid**2).sum() / 2))
    assert s.seed_sd == pytest.approx(np.std(x.mean(1), ddof=1)) and s.da_sd == pytest.approx(np.std(x.mean(0), ddof=1))
    assert spread({0: {"a": 1.0}}) is None


def test_joint_test_exact_by_hand():
    # One seed, three DAs: the 6 labelings; the statistic is the same for all (one seed centred) → p = 1.
    assert joint_test({0: {"a": 1.0, "b": 2.0, "c": 3.0}}).p == pytest.approx(1.0)
    # Two seeds, a always the best: of the 36 labelings, those putting the same DA on top in both seeds with
    # the same order are as extreme — 6 of 36 (the DA names are exchangeable).
    t = joint_test({0: {"a": 3.0, "b": 2.0, "c": 1.0}, 1: {"a": 3.0, "b": 2.0, "c": 1.0}})
    assert t.exact and t.draws == 36 and t.p == pytest.approx(6 / 36)


# ----------------------------------------------------------------------------- simulated sweeps


GRIDS = 1000


def rejection_rates(tests, seeds, effect=None, seed=0):
    gen = np.random.default_rng(seed)
    hits = dict.fromkeys(tests, 0)
    for g in range(GRIDS):
        table = grid(gen, seeds, effect)
        for name, test in tests.items():
            hits[name] += test(table, g) <= 0.05
    return {k: v / GRIDS for k, v in hits.items()}


def sign_flip_size(n, alpha=0.05):
    """The exact size of the two-sided sign-flip test at ``alpha`` for continuous differences: the share
    of the 2ⁿ⁻¹ distinct |sum| ranks whose p is at most alpha."""
    return math.floor(alpha * 2 ** n / 2) / 2 ** (n - 1)


def within(rate, expected, n=GRIDS):
    """``rate`` agrees with ``expected`` up to 3 binomial standard errors (and a floor for expected 0)."""
    return abs(rate - expected) <= 3 * math.sqrt(max(expected * (1 - expected), 1e-3) / n)


TESTS = {
    "paired": lambda t, g: paired(column(t, "cutmix"), column(t, "minimal")).p,
    "joint": lambda t, g: joint_test(t, draws=300, seed=g).p,
    "rho": lambda t, g: rank_correlation({d: {s: float(i) for s in t} for i, d in enumerate(DAS)},
                                         {d: column(t, d) for d in DAS}).p,
}


@pytest.mark.parametrize("seeds", [3, 8])
def test_no_effect_each_test_rejects_at_its_size(seeds):
    rates = rejection_rates(TESTS, seeds, seed=seeds)
    for name, rate in rates.items():
        assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / GRIDS), (name, rate)
    # The sign-flip test's exact size: 0 with 3 seeds (its p is never below 0.25), 6/128 with 8.
    assert within(rates["paired"], sign_flip_size(seeds)), rates
    assert sign_flip_size(3) == 0 and sign_flip_size(8) == pytest.approx(6 / 128)
    # ρ over 7 DAs (no ties): the exact size is the share of the 5040 orderings with p ≤ 0.05.
    x = np.arange(7.0)
    null = [abs(spearman(x, list(p))) for p in itertools.permutations(range(7))]
    size = np.mean([np.mean(np.array(null) >= r - 1e-9) <= 0.05 for r in null])
    assert within(rates["rho"], size), (rates["rho"], size)


def test_a_planted_half_point_is_found_with_eight_seeds():
    """0.5 points of one DA against minimal, seed offsets SD 0.6, residual SD 0.3. The paired
    differences have SD 0.3·√2, so the mean's SE with 8 seeds is 0.15: the sign-flip test's power is
    0.80 (0.798 over 20,000 simulated grids; a t-test's would be 0.83), the joint test's higher (it
    sees the other DAs' seeds too). 1,000 grids measure 0.80 within ±0.04 (3 SE); 10 seeds are clearly above."""
    rates = rejection_rates({"paired": TESTS["paired"], "joint": TESTS["joint"]}, 8, effect={"cutmix": 0.5}, seed=11)
    assert rates["paired"] >= 0.80 - 3 * math.sqrt(0.8 * 0.2 / GRIDS) and rates["joint"] >= 0.8, rates
    assert rejection_rates({"paired": TESTS["paired"]}, 10, effect={"cutmix": 0.5}, seed=12)["paired"] >= 0.85


def test_the_spread_recovers_the_simulated_components():
    gen = np.random.default_rng(3)
    fits = [spread(grid(gen, 8)) for _ in range(300)]
    assert statistics.fmean(f.residual_sd for f in fits) == pytest.approx(0.3, rel=0.05)
    assert statistics.fmean(f.seed_sd for f in fits) == pytest.approx(math.sqrt(0.6**2 + 0.3**2 / 7), rel=0.1)


def test_the_joint_tests_p_does_not_depend_on_the_order_the_runs_were_read():
    """Packed (tar order) and unpacked (sorted paths) runs of one grid gave p 0.13 and 0.14: the random
    permutations must act on the DAs in one fixed order."""
    rng = np.random.default_rng(3)
    das = [f"d{i}" for i in range(7)]
    table = {s: {d: float(rng.normal()) for d in das} for s in range(8)}  # 7!^8 orderings: random draws
    backwards = {s: dict(reversed(list(row.items()))) for s, row in reversed(list(table.items()))}
    assert joint_test(table).p == joint_test(backwards).p
