"""Attention transfer by hand (daqkd/kd/at.py)."""
import math

import pytest
import torch

from daqkd.kd import (
    AttentionTransfer,
    KDBatch,
)


def test_at_by_hand():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    t = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    a_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]  # mean_c F² = [5, 2], normalised
    a_t = [0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)]
    expected = ((a_s[0] - a_t[0]) ** 2 + (a_s[1] - a_t[1]) ** 2) / 2
    loss = AttentionTransfer()(KDBatch(None, None, None, [s], [t]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
