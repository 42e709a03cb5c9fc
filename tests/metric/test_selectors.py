"""Every selector against a hand computation on a tiny tensor, their sign convention, the
standard errors, and the pick (daqkd/metric/scoring.py: SELECTORS, score_passes)."""
import math

import pytest
import torch

from daqkd.metric.core import metric_score
from daqkd.metric.scoring import SELECTORS, AugmentScore, Passes, score_passes, select_augmentation, selector_value

# Two classes, ten images, two passes (the second with other draws).
P1 = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.95, 0.05],
                   [0.2, 0.8], [0.3, 0.7], [0.45, 0.55], [0.1, 0.9], [0.6, 0.4]])
P2 = torch.tensor([[0.85, 0.15], [0.7, 0.3], [0.5, 0.5], [0.75, 0.25], [0.9, 0.1],
                   [0.25, 0.75], [0.35, 0.65], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45]])
Y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
T = torch.nn.functional.one_hot(Y, 2).float()


def hand_entropy(p):
    return -sum(v * math.log(v) for v in p if v > 0)


def test_every_selector_by_hand():
    s = score_passes("x", Passes(P1, T, P2, T), Passes(P2, T, P1, T), group_size=5)
    ref = metric_score(P1, P2, Y, Y, 2)
    assert (s.m, s.dev, s.cmi) == pytest.approx((ref["m"], ref["dev"], ref["cmi"]), rel=1e-12)
    both = torch.cat([P1, P2]).double()
    # entropy: the mean over all 20 outputs
    assert s.entropy == pytest.approx(sum(hand_entropy(r.tolist()) for r in both) / 20, rel=1e-9)
    # teacher accuracy: image 9 says class 0 in both passes; image 2's 0.5/0.5 tie in pass 2 goes to class 0 (right)
    assert s.teacher_acc == pytest.approx((9 + 9) / 20)
    # variance: 4 groups of 5 consecutive outputs, their means' std per class, averaged
    groups = both.reshape(4, 5, 2).mean(1)
    assert s.variance == pytest.approx(float(groups.std(0).mean()), rel=1e-9)
    # the reference code's CE − CMI: the mean cross-entropy of pass 2 against the true class, minus CMI
    ce2 = -sum(math.log(float(P2[i, Y[i]])) for i in range(10)) / 10
    assert s.ce_cmi == pytest.approx(ce2 - ref["cmi"], rel=1e-9)
    # the student's M: its own passes (here the two passes swapped)
    assert s.student_m == pytest.approx(metric_score(P2, P1, Y, Y, 2)["m"], rel=1e-12)
    assert s.num_samples == 10


def test_signs_lower_is_predicted_better():
    s = AugmentScore("x", m=0.1, dev=0.3, cmi=0.2, variance=0.05, entropy=0.4, teacher_acc=0.9, teacher_ce=0.3,
                     num_samples=10, seconds=0.0, student_m=0.7, ce_cmi=0.25)
    assert {k: selector_value(s, k) for k in SELECTORS} == {
        "m": 0.1, "variance": 0.05, "cmi": -0.2, "ce_cmi": 0.25, "dev": 0.3, "entropy": 0.4, "teacher_acc": -0.9, "student_m": 0.7}


def test_each_selector_picks_its_own_argmin():
    a = AugmentScore("a", m=0.1, dev=0.5, cmi=0.4, variance=0.3, entropy=0.2, teacher_acc=0.8, teacher_ce=0, num_samples=1,
                     seconds=0, student_m=0.9, ce_cmi=0.6)
    b = AugmentScore("b", m=0.2, dev=0.1, cmi=0.1, variance=0.1, entropy=0.5, teacher_acc=0.9, teacher_ce=0, num_samples=1,
                     seconds=0, student_m=0.3, ce_cmi=0.4)
    picks = {k: select_augmentation([a, b], k) for k in SELECTORS}
    assert picks == {"m": "a", "variance": "b", "cmi": "a", "ce_cmi": "b", "dev": "b", "entropy": "a", "teacher_acc": "b",
                     "student_m": "b"}
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        select_augmentation([a, b], "nope")


def test_standard_errors_are_bootstrap_spreads_that_shrink_with_more_images():
    gen = torch.Generator().manual_seed(0)

    def passes(n):
        y = torch.arange(n) % 4
        t = torch.nn.functional.one_hot(y, 4).float()
        logits = lambda: torch.randn(n, 4, generator=gen) + 2 * t  # noqa: E731
        return Passes(torch.softmax(logits(), 1), t, torch.softmax(logits(), 1), t)

    small, large = score_passes("s", passes(200)), score_passes("l", passes(3200))
    for key in ("m_se", "dev_se", "cmi_se", "ce_cmi_se", "variance_se", "entropy_se", "teacher_acc_se"):
        assert 0 < getattr(large, key) < getattr(small, key), key
    # 16× the images: about a quarter of the standard error (√16), within the bootstrap's own noise
    assert 0.15 < large.m_se / small.m_se < 0.4
    assert math.isnan(small.student_m) and math.isnan(small.student_m_se)  # no student scored


def paired_candidates(n, shared, gen, classes=4):
    """Two candidates' passes over the same n images. Each image has a difficulty (how far its true
    class's logit is ahead), common to both candidates when ``shared``, drawn for each otherwise; the
    candidates then add their own noise."""
    y = torch.arange(n) % classes
    t = torch.nn.functional.one_hot(y, classes).float()
    common = 3 * torch.rand(n, 1, generator=gen)

    def passes():
        margin = common if shared else 3 * torch.rand(n, 1, generator=gen)
        logits = lambda: torch.randn(n, classes, generator=gen) * 0.3 + margin * t  # noqa: E731
        return Passes(torch.softmax(logits(), 1), t, torch.softmax(logits(), 1), t)

    return passes(), passes(), y


def test_paired_standard_error_is_narrower_when_image_difficulty_is_shared_and_equal_when_not():
    from daqkd.metric.scoring import difference_se, pair_standard_errors

    gen = torch.Generator().manual_seed(0)
    ratios = {True: [], False: []}
    for shared in (True, False):
        for rep in range(20):
            pa, pb, y = paired_candidates(400, shared, gen)
            a, b = score_passes("a", pa, seed=rep, classes=y), score_passes("b", pb, seed=rep, classes=y)
            pair_standard_errors([a, b])
            for key in ("ce_cmi", "m"):
                independent = math.sqrt(getattr(a, key + "_se") ** 2 + getattr(b, key + "_se") ** 2)
                assert difference_se(a, b, key) == a.paired_se[key]["b"] == b.paired_se[key]["a"]
                ratios[shared].append(difference_se(a, b, key) / independent)
    # Shared difficulty cancels in the difference: the paired band is much narrower.
    assert max(ratios[True]) < 0.6
    # Nothing shared but the resampled images: the two are the same in expectation (200 replicates: a few % of noise).
    assert abs(sum(ratios[False]) / len(ratios[False]) - 1) < 0.05


def test_candidates_bootstrapped_on_other_images_get_no_paired_standard_error():
    from daqkd.metric.scoring import difference_se, pair_standard_errors

    gen = torch.Generator().manual_seed(1)
    pa, pb, y = paired_candidates(200, True, gen)
    a, b = score_passes("a", pa, seed=0, classes=y), score_passes("b", pb, seed=1, classes=y)  # other resamples
    pair_standard_errors([a, b])
    assert a.paired_se == {} and b.paired_se == {}
    assert difference_se(a, b, "m") == pytest.approx(math.sqrt(a.m_se**2 + b.m_se**2))
    assert "replicates" not in a.as_dict() and a.as_dict()["paired_se"] == {}
