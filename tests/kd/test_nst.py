"""Neuron selectivity transfer by hand (daqkd/kd/nst.py)."""
import pytest
import torch

from daqkd.kd import (
    KDBatch,
    NeuronSelectivityTransfer,
)


def test_nst_by_hand():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channels [1, 0] and [0, 1]
    t = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]]]])  # both channels normalise to [1, 0]
    # k(s,s) = mean(I²) = 0.5; k(t,t) = mean(1) = 1; k(s,t) = mean([[1,1],[0,0]]) = 0.5
    assert float(NeuronSelectivityTransfer()(KDBatch(None, None, None, [s], [t]))) == pytest.approx(0.5, rel=1e-6)
