"""Relational KD by hand, twice differentiable (daqkd/kd/rkd.py)."""
import math

import pytest
import torch

from daqkd.kd import (
    KDBatch,
    RelationalKD,
)


def _huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

def test_rkd_distance_and_angle_by_hand():
    es, et = [[0, 0], [1, 0], [0, 1]], [[0, 0], [2, 0], [0, 1]]

    def dist(e):
        d = [[math.dist(a, b) for b in e] for a in e]
        mean = sum(d[i][j] for i in range(3) for j in range(3) if i != j) / 6
        return [[v / mean for v in row] for row in d]

    def angles(e):
        out = []
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    u = [e[i][0] - e[j][0], e[i][1] - e[j][1]]
                    v = [e[k][0] - e[j][0], e[k][1] - e[j][1]]
                    nu, nv = math.hypot(*u), math.hypot(*v)
                    out.append(0.0 if nu == 0 or nv == 0 else (u[0] * v[0] + u[1] * v[1]) / (nu * nv))
        return out

    ds, dt = dist(es), dist(et)
    loss_d = sum(_huber(ds[i][j] - dt[i][j]) for i in range(3) for j in range(3)) / 9
    loss_a = sum(_huber(a - b) for a, b in zip(angles(es), angles(et))) / 27
    s, t = torch.tensor(es, dtype=torch.float64), torch.tensor(et, dtype=torch.float64)
    only_d = RelationalKD(distance_weight=1, angle_weight=0)(KDBatch(None, None, None, [s], [t]))
    only_a = RelationalKD(distance_weight=0, angle_weight=1)(KDBatch(None, None, None, [s], [t]))
    assert float(only_d) == pytest.approx(loss_d, rel=1e-9)
    assert float(only_a) == pytest.approx(loss_a, rel=1e-9)
    assert loss_d > 0 and loss_a > 0

def test_rkd_is_twice_differentiable():
    """The EWGS δ estimate differentiates the loss twice; RKD's distances must allow that."""
    e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 3, dtype=torch.float64)
    loss = RelationalKD()(KDBatch(None, None, None, [e], [t]))
    (g,) = torch.autograd.grad(loss, e, create_graph=True)
    (hv,) = torch.autograd.grad(g, e, torch.ones_like(g))
    assert torch.isfinite(hv).all()
