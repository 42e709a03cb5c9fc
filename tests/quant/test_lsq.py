"""LSQ against hand computations; the step trains (daqkd/quant/lsq.py)."""
import math

import pytest
import torch

from daqkd.quant import (
    LSQQuantizer,
)


def test_lsq_gradients_by_hand():
    q = LSQQuantizer(bits=2, signed=False)  # Q_n = 0, Q_p = 3
    with torch.no_grad():
        q.step.fill_(0.5)
    x = torch.tensor([[-0.2, 0.1, 0.4, 0.9, 2.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    out = q(x)
    # v = x/s = [-.4, .2, .8, 1.8, 4]; round(clamp(v, 0, 3)) = [0, 0, 1, 2, 3]
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.5]]))
    out.backward(g)
    assert x.grad.tolist() == [[0.0, 2.0, 3.0, 4.0, 0.0]]
    ds = [0.0, 0 - 0.2, 1 - 0.8, 2 - 1.8, 3.0]  # below: −Q_n, inside: round(v) − v, above: Q_p
    expected = sum(gi * di for gi, di in zip(g[0].tolist(), ds)) / math.sqrt(5 * 3)  # N = 5 features
    assert float(q.step.grad) == pytest.approx(expected, rel=1e-5)

def test_lsq_initial_step_has_the_least_quantization_error():
    gen = torch.Generator().manual_seed(0)
    for signed, x in ((True, torch.randn(5000, generator=gen)), (False, torch.randn(5000, generator=gen).relu())):
        for bits in (2, 4, 8):
            q = LSQQuantizer(bits=bits, signed=signed, role="weight" if signed else "activation")
            q.calibrate(x)
            s = float(q.step)

            def mse(step, x=x, q=q):
                return float(((x / step).clamp(-q.q_n, q.q_p).round() * step - x).pow(2).mean())

            paper = 2 * float(x.abs().mean()) / math.sqrt(q.q_p)
            assert mse(s) <= mse(paper) + 1e-12, (signed, bits)
            assert mse(s) <= min(mse(s * 1.15), mse(s * 0.85)) + 1e-12  # a minimum, not an edge


def test_lsq_signed_weights_by_hand():
    q = LSQQuantizer(bits=3, signed=True, role="weight")  # Q_n = 4, Q_p = 3
    w = torch.tensor([-3.0, -0.7, 0.26, 1.4, 2.5], requires_grad=True)
    s = 2 * w.detach().abs().mean().item() / math.sqrt(3)  # the paper's init, 2·mean|x| / √Q_p, set by hand
    with torch.no_grad():
        q.step.fill_(s)
    out = q(w)
    g = torch.tensor([1.0, -1.0, 2.0, 0.5, 3.0])
    out.backward(g)
    v = [wi / s for wi in w.tolist()]
    exp_out, exp_x, ds = [], [], []
    for vi in v:
        c = min(max(vi, -4), 3)
        exp_out.append(round(c) * s)
        inside = -4 < vi < 3
        exp_x.append(1.0 if inside else 0.0)
        ds.append(round(vi) - vi if inside else (-4 if vi <= -4 else 3))
    assert torch.allclose(out, torch.tensor(exp_out), atol=1e-6)
    assert torch.allclose(w.grad, g * torch.tensor(exp_x))
    expected = sum(gi * di for gi, di in zip(g.tolist(), ds)) / math.sqrt(5 * 3)
    assert float(q.step.grad) == pytest.approx(expected, rel=1e-5)
