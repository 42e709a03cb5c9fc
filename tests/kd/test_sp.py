"""Similarity-preserving KD by hand (daqkd/kd/sp.py)."""
import math

import pytest
import torch

from daqkd.kd import (
    KDBatch,
    SimilarityPreserving,
)


def test_sp_by_hand():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    g_t = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [1 / math.sqrt(2), 1 / math.sqrt(2)]]
    expected = sum((float(i == j) - g_t[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    assert float(SimilarityPreserving()(KDBatch(None, None, None, [s], [t]))) == pytest.approx(expected, rel=1e-6)
