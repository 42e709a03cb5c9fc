"""The QAT+KD objective (METHOD.md §3)."""
import math

import pytest
import torch

from daqkd.kd import DistillationLoss, kd_kl


def test_kd_term_by_hand():
    zs, zt = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    t = 4.0
    ps = torch.softmax(zs / t, 1)[0].tolist()
    pt = torch.softmax(zt / t, 1)[0].tolist()
    expected = t * t * sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert float(kd_kl(zs, zt, t)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_kl(zt, zt, t)) == pytest.approx(0.0, abs=1e-7)


def test_weighted_sum_and_soft_labels():
    torch.manual_seed(0)
    zs, zt = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    loss, parts = DistillationLoss(gamma=1, alpha=2)(zs, zt, y)
    ce = torch.nn.functional.cross_entropy(zs, y)
    assert torch.allclose(loss, ce + 2 * kd_kl(zs, zt, 4.0))
    assert set(parts) == {"ce", "kd"}
    soft = torch.nn.functional.one_hot(y, 5).float()
    assert torch.allclose(DistillationLoss(gamma=1, alpha=2)(zs, zt, soft)[0], loss)  # one-hot = hard


def test_sqakd_never_reads_labels():
    zs, zt = torch.randn(4, 3), torch.randn(4, 3)
    sqakd = DistillationLoss(gamma=0, alpha=1)
    a, parts = sqakd(zs, zt, torch.tensor([0, 1, 2, 0]))
    b, _ = sqakd(zs, zt, None)  # no labels at all
    assert torch.equal(a, b) and set(parts) == {"kd"}
    assert not DistillationLoss(gamma=1, alpha=0).needs_teacher


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="all 0"):
        DistillationLoss(gamma=0, alpha=0)
    with pytest.raises(ValueError, match="≥ 0"):
        DistillationLoss(gamma=-1)
