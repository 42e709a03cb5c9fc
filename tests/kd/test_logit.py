"""The KD and CE terms by hand (daqkd/kd/logit.py)."""
import math

import pytest
import torch

from daqkd.kd import kd_kl


def test_kd_term_by_hand():
    zs, zt = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    t = 4.0
    ps = torch.softmax(zs / t, 1)[0].tolist()
    pt = torch.softmax(zt / t, 1)[0].tolist()
    expected = t * t * sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert float(kd_kl(zs, zt, t)) == pytest.approx(expected, rel=1e-6)
    assert float(kd_kl(zt, zt, t)) == pytest.approx(0.0, abs=1e-7)
