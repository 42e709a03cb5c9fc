"""M = DEV − CMI and the variance baseline against hand computations (daqkd/metric/core.py)."""
import math

import pytest
import torch

from daqkd.metric import (
    class_prototypes,
    contextual_mutual_information,
    label_deviation,
    metric_score,
    variance_score,
)

P = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]], dtype=torch.float64)

Y = torch.tensor([0, 0, 1, 1])

def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)

def test_prototypes_hard_labels_by_hand():
    q = class_prototypes(P, Y, 2)
    # Q_0 = mean(p_0, p_1) = (0.8, 0.2); Q_1 = mean(p_2, p_3) = (0.3, 0.7)
    assert torch.allclose(q, torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64))

def test_cmi_and_dev_by_hand():
    q = class_prototypes(P, Y, 2)
    expected_cmi = (kl([0.9, 0.1], [0.8, 0.2]) + kl([0.7, 0.3], [0.8, 0.2])
                    + kl([0.2, 0.8], [0.3, 0.7]) + kl([0.4, 0.6], [0.3, 0.7])) / 4
    assert float(contextual_mutual_information(P, Y, q)) == pytest.approx(expected_cmi, rel=1e-12)
    expected_dev = -(math.log(0.8) + math.log(0.7)) / 2
    assert float(label_deviation(q)) == pytest.approx(expected_dev, rel=1e-12)
    s = metric_score(P, P, Y, Y, 2)
    assert s["m"] == pytest.approx(expected_dev - expected_cmi, rel=1e-12)

def test_soft_prototypes_by_hand_and_rows_sum_to_one():
    # Sample 0 is a 70/30 mix of classes 0 and 1 (as CutMix makes), the others are pure.
    t = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    q = class_prototypes(P, t, 2)
    q0 = (0.7 * P[0] + 1.0 * P[1]) / 1.7
    q1 = (0.3 * P[0] + P[2] + P[3]) / 2.3
    assert torch.allclose(q, torch.stack([q0, q1]))
    assert torch.allclose(q.sum(1), torch.ones(2, dtype=torch.float64))
    # c_0 = 0.7·Q_0 + 0.3·Q_1: the soft context of a mixed sample.
    c = [0.7 * q0 + 0.3 * q1, q0, q1, q1]
    expected = sum(kl(P[i].tolist(), c[i].tolist()) for i in range(4)) / 4
    assert float(contextual_mutual_information(P, t, q)) == pytest.approx(expected, rel=1e-12)

def test_soft_one_hot_reduces_exactly_to_hard():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 5, generator=gen), 1)
    labels = torch.arange(50) % 5
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    q_hard, q_soft = class_prototypes(probs, labels, 5), class_prototypes(probs, onehot, 5)
    assert torch.equal(q_hard, q_soft)
    assert torch.equal(contextual_mutual_information(probs, labels, q_hard), contextual_mutual_information(probs, onehot, q_soft))
    assert torch.allclose(q_hard.sum(1), torch.ones(5))

def test_prototype_rows_are_not_transposed():
    # The reference bug accumulated S[pred, target]; a non-symmetric case tells the two apart.
    probs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    q = class_prototypes(probs, torch.tensor([0, 1, 2]), 3)
    assert torch.equal(q[1], torch.tensor([1.0, 0.0, 0.0]))  # class 1 is predicted as class 0

def test_empty_class_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        class_prototypes(P, torch.tensor([0, 0, 0, 0]), 2)

def test_variance_baseline_by_hand():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # groups of 2: (0.5, 0.5), (1, 0); std over groups per class (unbiased) = 0.3536 each
    assert float(variance_score(probs, group_size=2)) == pytest.approx(math.sqrt(0.125), rel=1e-6)


def test_entropy_and_variance_groups_by_hand():
    from daqkd.metric import entropy, variance_groups

    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]], dtype=torch.float64)
    assert entropy(p).tolist() == pytest.approx([math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))])
    g = variance_groups(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]), group_size=2)
    assert g.tolist() == [[0.5, 0.5], [1.0, 0.0]]  # the trailing partial group is dropped


@pytest.mark.parametrize("labels", ["hard", "soft"])  # the class-by-class path, and the general one (CutMix)
def test_bootstrap_metric_equals_the_core_on_each_resample(labels):
    from daqkd.metric import bootstrap_metric

    gen = torch.Generator().manual_seed(0)
    n, c = 40, 4
    y1, y2 = torch.arange(n) % c, torch.randperm(n, generator=gen) % c  # pass 2 draws other labels
    p1, p2 = (torch.softmax(torch.randn(n, c, generator=gen) * 2, 1).double() for _ in range(2))
    t1, t2 = (torch.nn.functional.one_hot(y, c).double() for y in (y1, y2))
    if labels == "soft":
        lam = torch.rand(n, 1, generator=gen, dtype=torch.float64)
        t1, t2 = lam * t1 + (1 - lam) * t1.roll(1, 1), (1 - lam) * t2 + lam * t2.roll(1, 1)
    idx = torch.cat([torch.arange(c), torch.randint(0, n, (n - c,), generator=gen)])  # every class drawn
    w = torch.stack([torch.ones(n, dtype=torch.float64), torch.bincount(idx, minlength=n).double()])
    boot = bootstrap_metric(p1, t1, p2, t2, w)
    full = metric_score(p1, p2, t1, t2, c)
    resampled = metric_score(p1[idx], p2[idx], t1[idx], t2[idx], c)
    for key in ("m", "dev", "cmi"):
        assert float(boot[key][0]) == pytest.approx(full[key], rel=1e-10)  # weights of one: the plain metric
        assert float(boot[key][1]) == pytest.approx(resampled[key], rel=1e-10)  # counts: the resampled data
    lonely = torch.zeros(1, n, dtype=torch.float64)
    lonely[0, t1[:, 3] == 0] = 1.0  # no pass-1 image with any mass on class 3 drawn: no prototype, no value
    assert math.isnan(float(bootstrap_metric(p1, t1, p2, t2, lonely)["m"][0]))
