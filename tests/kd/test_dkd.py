"""Decoupled KD by hand, with its warm-up (daqkd/kd/dkd.py)."""
import math

import pytest
import torch

from daqkd.kd import (
    DecoupledKD,
    KDBatch,
)


def test_dkd_by_hand():
    zs, zt = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    ps, pt = torch.softmax(zs, 1)[0].tolist(), torch.softmax(zt, 1)[0].tolist()
    bs, bt = [ps[0], 1 - ps[0]], [pt[0], 1 - pt[0]]
    tckd = sum(a * math.log(a / b) for a, b in zip(bt, bs))
    ns, nt = [0.5, 0.5], [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax over the non-target logits
    nckd = sum(a * math.log(a / b) for a, b in zip(nt, ns))
    loss = DecoupledKD(tckd_weight=1, nckd_weight=8, temperature=1.0, warmup=0)(KDBatch(zs, zt, torch.tensor([0])))
    assert float(loss) == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    half = DecoupledKD(temperature=1.0, warmup=0.5)(KDBatch(zs, zt, torch.tensor([0]), progress=0.25))
    assert float(half) == pytest.approx(0.5 * (tckd + 8 * nckd), rel=1e-5)  # linear warm-up
