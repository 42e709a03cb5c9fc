"""EWGS: grid, the EWGS backward against a hand computation, the fused Function, δ against the exact Hessian (daqkd/quant/ewgs.py)."""
import functools

import pytest
import torch
import torch.nn as nn

from daqkd.models import create_model
from daqkd.quant import (
    EWGSQuantizer,
    QuantLinear,
    calibrate,
    estimate_ewgs_deltas,
    quantize_model,
)

EWGS = functools.partial(EWGSQuantizer, delta_mode="fixed")

@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [True, False])
def test_ewgs_forward_grid(bits, signed):
    q = EWGS(bits=bits, signed=signed, role="weight" if signed else "activation")
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(bits))
    x = x if signed else x.abs()
    q.initialize(x)
    out = q(x)
    levels = torch.unique(out)
    assert len(levels) <= 2**bits
    assert len(levels) == 2**bits  # a wide input hits every level
    lo, hi = (-1.0, 1.0) if signed else (0.0, 1.0)
    assert out.min() >= lo and out.max() <= hi
    # Levels are evenly spaced: 2/(2^b − 1) apart for weights, 1/(2^b − 1) for activations.
    step = (hi - lo) / (2**bits - 1)
    assert torch.allclose(levels.diff(), torch.full((2**bits - 1,), step), atol=1e-6)

def test_ewgs_backward_matches_hand_computation():
    l, u, delta, levels = -0.4, 0.4, 0.3, 3  # 2 bits
    xs = [-0.5, -0.3, -0.1, 0.05, 0.17, 0.3, 0.9]
    gs = [0.7, -1.1, 0.5, -0.2, 1.3, 0.4, -0.6]  # upstream gradients w.r.t. the output 2·x_q − 1
    q = EWGSQuantizer(bits=2, signed=True, role="weight", delta_mode="fixed").double()
    with torch.no_grad():  # set after .double(), so l, u and δ are exactly the hand values
        q.lower.fill_(l)
        q.upper.fill_(u)
        q.delta.fill_(delta)
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    out = q(x)
    out.backward(torch.tensor(gs, dtype=torch.float64))

    exp_x, exp_l, exp_u = [], 0.0, 0.0
    for xi, gi in zip(xs, gs):
        xn = (xi - l) / (u - l)
        if not 0 < xn < 1:  # clipped: no gradient to x, l or u
            exp_x.append(0.0)
            continue
        xq = round(xn * levels) / levels
        g = 2 * gi  # d(2·x_q − 1)/dx_q = 2
        sign = (g > 0) - (g < 0)
        gn = g * (1 + delta * sign * (xn - xq))  # EWGS, paper Eq. 5
        exp_x.append(gn / (u - l))
        exp_l += gn * (xi - u) / (u - l) ** 2
        exp_u += gn * -(xi - l) / (u - l) ** 2
    assert torch.allclose(x.grad, torch.tensor(exp_x, dtype=torch.float64), atol=1e-12)
    assert float(q.lower.grad) == pytest.approx(exp_l, abs=1e-12)
    assert float(q.upper.grad) == pytest.approx(exp_u, abs=1e-12)
    # δ really scales: with δ = 0 (STE) the in-range gradients differ.
    q.delta.fill_(0.0)
    x.grad = None
    q(x).backward(torch.tensor(gs, dtype=torch.float64))
    assert not torch.allclose(x.grad, torch.tensor(exp_x, dtype=torch.float64))

def test_delta_estimate_matches_the_exact_hessian_trace():
    """δ = (Tr(H)/N) / (3·σ(g)) per quantizer, against the exact Hessian of the loss with respect to
    each quantizer's output (torch.autograd.functional.hessian), on a layer small enough to form it."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    layer = QuantLinear(6, 3, bias=False)
    layer._setup_quant(EWGSQuantizer(2, True, "weight"), EWGSQuantizer(2, False, "activation"), False)
    model = nn.Sequential(layer)
    x, y = torch.rand(5, 6) * 2, torch.tensor([0, 1, 2, 0, 1])
    calibrate(model, x)
    deltas = estimate_ewgs_deltas(model, lambda b: F.cross_entropy(model(b[0]), b[1]), [(x, y)],
                                  torch.Generator().manual_seed(0), probes=4000)
    with torch.no_grad():
        w_out, a_out = layer.weight_quantizer(layer.weight), layer.act_quantizer(x)

    def exact(f, point, gain):
        h = torch.autograd.functional.hessian(f, point).reshape(point.numel(), point.numel())
        p = point.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(p), p)
        # In x_q units: y = gain·x_q + b, so Tr H_xq = gain²·Tr H_y and σ(g_xq) = gain·σ(g_y).
        return max(float(h.trace()) / point.numel() * gain**2, 0.0) / (3 * float(g.std()) * gain)

    expected_w = exact(lambda w: F.cross_entropy(F.linear(a_out, w), y), w_out, 2.0)
    expected_a = exact(lambda a: F.cross_entropy(F.linear(a, w_out), y), a_out, 1.0)
    assert 0 < expected_w < 3 and 0 < expected_a < 3  # inside (0, L): neither clipped nor capped
    assert deltas["0.weight_quantizer"] == pytest.approx(expected_w, rel=0.15)
    assert deltas["0.act_quantizer"] == pytest.approx(expected_a, rel=0.15)  # Hutchinson noise at 4000 probes: a few %
    assert float(layer.weight_quantizer.delta) == pytest.approx(deltas["0.weight_quantizer"])  # installed in the quantizer

def test_non_finite_delta_estimate_keeps_the_previous_delta():
    torch.manual_seed(0)
    student = quantize_model(create_model("resnet20", 10, 1), EWGSQuantizer, EWGSQuantizer, 2, 2, "fp", True)
    x = torch.randn(8, 1, 28, 28)
    calibrate(student, x)
    deltas = estimate_ewgs_deltas(student, lambda b: student(b).sum() * float("nan"), [x])
    assert all(v == pytest.approx(1e-3) for v in deltas.values())  # the initial δ, not NaN
    assert all(float(q.delta) == pytest.approx(1e-3) for q in student.modules() if isinstance(q, EWGSQuantizer))

def test_delta_formula_by_hand():
    from daqkd.quant.ewgs import ewgs_delta

    # weights: y = 2·x_q − 1, so Tr H_xq = 4·Tr H_y and σ(g_xq) = 2·σ(g_y): δ = 4·0.03 / (3·2·0.5) = 0.04
    assert ewgs_delta(0.03, 0.5, 2.0, 3, previous=0.001) == pytest.approx(0.04)
    assert ewgs_delta(-0.2, 0.5, 1.0, 3, previous=0.001) == 0.0  # negative trace clipped at 0
    assert ewgs_delta(1e6, 1e-3, 1.0, 3, previous=0.001) == 3.0  # capped at L = 2² − 1
    assert ewgs_delta(float("nan"), 0.5, 1.0, 3, previous=0.007) == 0.007  # keep, never NaN
    assert ewgs_delta(0.1, float("nan"), 1.0, 3, previous=0.007) == 0.007  # keep, never a silent 0

@pytest.mark.parametrize("is_weight", [True, False])
@pytest.mark.parametrize("create_graph", [False, True])
def test_fused_ewgs_matches_autograd_reference(is_weight, create_graph):
    """The fused hot-path Function gives what autograd through clamp and EWGSRound gives."""
    from daqkd.quant.ewgs import ewgs_round

    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 8, 5, 5, generator=gen, dtype=torch.float64)
    x0 = x0 if is_weight else x0.relu()  # post-ReLU activations have exact zeros at l = 0
    g = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    q = EWGSQuantizer(bits=3, signed=is_weight, role="weight" if is_weight else "activation", delta_mode="fixed").double()
    q.initialize(x0)
    q.delta.fill_(0.05)

    def grads(fn):
        x = x0.clone().requires_grad_(True)
        out = fn(x)
        gx, gl, gu = torch.autograd.grad(out, [x, q.lower, q.upper], g, create_graph=create_graph)
        return out.detach(), gx.detach(), gl.detach(), gu.detach()

    def reference(x):
        x_q = ewgs_round(q.normalize(x), q.levels, q.delta)
        return 2 * x_q - 1 if is_weight else x_q

    for a, b in zip(grads(q), grads(reference)):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)
