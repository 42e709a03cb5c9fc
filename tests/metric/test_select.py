"""The decision rule of augment=auto against hand-made scores (daqkd/metric/select.py): the selector by
the planned budget, ties within the standard error of the difference (paired when recorded), the
milder of tied candidates, and candidates that dropped out early left out of the comparison."""
import dataclasses

import pytest

from daqkd.metric.scoring import AugmentScore
from daqkd.metric.select import Rule, decide


def s(name, m, m_se, ce_cmi, ce_cmi_se, teacher_ce, teacher_acc):
    return AugmentScore(name, m=m, dev=0.0, cmi=0.0, variance=0.0, entropy=0.0, teacher_acc=teacher_acc, teacher_ce=teacher_ce,
                        num_samples=100, seconds=0.0, m_se=m_se, ce_cmi=ce_cmi, ce_cmi_se=ce_cmi_se)


# M prefers trivialaugment (−0.40, far from the rest); CE − CMI prefers minimal, with augmix 0.02 behind
# (combined standard error √(0.01² + 0.015²) = 0.018: 1.1 of them) and cutmix far behind.
POOL = [s("minimal", -0.06, 0.01, -0.03, 0.010, 0.20, 0.95), s("augmix", -0.11, 0.01, -0.01, 0.015, 0.15, 0.96),
        s("cutmix", -0.12, 0.01, 1.26, 0.030, 1.50, 0.60), s("trivialaugment", -0.40, 0.01, 0.56, 0.020, 0.90, 0.70)]


def test_the_planned_budget_chooses_the_selector():
    rule = Rule()  # auto: ce_cmi below 40 planned epochs, m at or above
    short, long = decide(POOL, rule, 8), decide(POOL, rule, 40)
    assert (short.selector, short.selected) == ("ce_cmi", "minimal")
    assert (long.selector, long.selected) == ("m", "trivialaugment")
    assert "8 planned epochs < metric.long_epochs=40" in short.how and "40 planned epochs ≥" in long.how
    assert decide(POOL, Rule(long_epochs=None), 1000).selector == "ce_cmi"
    assert decide(POOL, Rule(selector="m"), 2).selected == "trivialaugment"  # a named selector at every budget


def test_ties_go_to_the_milder_candidate_or_the_first():
    # With tie_z = 1.2, augmix (1.1 combined SE behind minimal) ties with it; the teacher is more accurate on augmix.
    d = decide(POOL, Rule(tie_z=1.2), 8)
    assert d.leader == "minimal" and d.tied == ["minimal", "augmix"] and d.selected == "augmix"
    assert "the milder (augmix, the teacher's most accurate) wins" in d.how
    first = decide(POOL, Rule(tie_z=1.2, tie="first"), 8)
    assert first.selected == "minimal" and first.tied == ["minimal", "augmix"]
    # The first in pool order, even when the leader comes later in the pool.
    swapped = decide([POOL[1], POOL[0]], Rule(tie_z=1.2, tie="first"), 8)
    assert swapped.leader == "minimal" and swapped.selected == "augmix" and "the first in pool order (augmix) wins" in swapped.how
    assert decide(POOL, Rule(tie_z=1.0), 8).tied == ["minimal"]  # 1.1 SE apart: told apart at z = 1


def test_a_bad_rule_is_refused():
    with pytest.raises(ValueError, match="metric.short=best is not a selector"):
        Rule(short="best")
    with pytest.raises(ValueError, match="metric.tie=coin is not a tie rule"):
        Rule(tie="coin")


def test_a_blanking_da_is_not_milder_for_a_weak_teacher():
    # A DA that blanks the image: the teacher is uncertain (CE ≈ log 10, lower than its confident
    # mistakes on a real DA) but no more accurate than chance. Tied, the real DA wins.
    blank = s("random_erasing", 0.0, 0.1, 2.30, 0.2, 2.30, 0.10)
    real = s("trivialaugment", -0.1, 0.1, 2.40, 0.2, 2.60, 0.25)
    assert decide([blank, real], Rule(selector="m"), 1).selected == "trivialaugment"


def test_a_selector_registered_without_a_standard_error(monkeypatch):
    """A selector added with SELECTORS.add(name, fn) and no field= has no standard error: it picks by its
    value alone (ties only at equal values), and scoring in rounds never stops early for it."""
    from daqkd.metric.select import pruner
    from daqkd.registry import SELECTORS

    SELECTORS.names()
    monkeypatch.setattr(SELECTORS, "_entries", {**SELECTORS._entries, "neg_teacher_ce": lambda sc: -sc.teacher_ce})
    monkeypatch.setattr(SELECTORS, "_meta", {**SELECTORS._meta, "neg_teacher_ce": {}})
    rule = Rule(selector="neg_teacher_ce")
    assert decide(POOL, rule, 2).selected == "cutmix"  # the highest teacher CE (1.50)
    assert pruner(rule, 2, 3.0)(POOL) == [p.name for p in POOL]


def test_the_tie_band_is_the_paired_standard_error_when_recorded():
    # augmix is 0.02 behind minimal in CE − CMI. Independent SEs: √(0.01² + 0.015²) = 0.018, 1.1 of them:
    # apart at z = 1.2? No: tied. Paired (the images' difficulty cancels): 0.005, 4 of them: told apart.
    minimal, augmix = (dataclasses.replace(p) for p in POOL[:2])
    assert decide([minimal, augmix], Rule(tie_z=1.2), 8).tied == ["minimal", "augmix"]
    minimal.paired_se = {"ce_cmi": {"augmix": 0.005}}
    d = decide([minimal, augmix], Rule(tie_z=1.2), 8)
    assert d.tied == ["minimal"] and d.selected == "minimal"
    augmix.paired_se = {"ce_cmi": {"minimal": 0.005}}  # recorded on either side, or both
    minimal.paired_se = {}
    assert decide([minimal, augmix], Rule(tie_z=1.2), 8).tied == ["minimal"]
    # A paired SE wider than the independent one (the difficulty works against the difference) ties them.
    augmix.paired_se = {"ce_cmi": {"minimal": 0.03}}
    assert decide([minimal, augmix], Rule(tie_z=1.0), 8).tied == ["minimal", "augmix"]


def test_candidates_out_of_the_race_early_are_not_compared():
    # trivialaugment leads M on 100 images; minimal dropped out after 50 images with a partial score
    # that would now lead (CMI from few images is biased upwards, so M downwards): it is not compared.
    lead = dataclasses.replace(POOL[3])
    early = dataclasses.replace(POOL[0], m=-0.9, num_samples=50)
    d = decide([early, lead, dataclasses.replace(POOL[2])], Rule(selector="m"), 100)
    assert d.selected == "trivialaugment" and d.compared == ["trivialaugment", "cutmix"]
    assert "minimal out of the race before 100 images, not compared" in d.how
    # A paired SE recorded against a candidate scored on other images is not used.
    lead.paired_se = {"m": {"minimal": 1e-6}}
    assert decide([early, lead], Rule(selector="m"), 100).compared == ["trivialaugment"]
