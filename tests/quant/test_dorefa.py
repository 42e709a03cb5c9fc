"""DoReFa against a hand computation (daqkd/quant/dorefa.py)."""
import math

import torch

from daqkd.quant import (
    DoReFaQuantizer,
)


def test_dorefa_gradients_by_hand():
    levels = 3  # 2 bits
    w_list = [-1.2, -0.3, 0.1, 0.5, 0.9]
    g = [0.4, -1.0, 2.0, 0.3, -0.7]
    q = DoReFaQuantizer(bits=2, signed=True, role="weight").double()
    w = torch.tensor(w_list, dtype=torch.float64, requires_grad=True)
    out = q(w)
    out.backward(torch.tensor(g, dtype=torch.float64))
    t = [math.tanh(v) for v in w_list]
    m = max(abs(v) for v in t)
    j = max(range(5), key=lambda i: abs(t[i]))
    r = [v / (2 * m) + 0.5 for v in t]
    exp_out = [2 * round(ri * levels) / levels - 1 for ri in r]
    assert torch.allclose(out, torch.tensor(exp_out, dtype=torch.float64))
    # STE through round; chain rule through r_i = t_i/(2M) + 1/2 with M = max|t| (= |t_j|).
    gr = [2 * gi for gi in g]
    exp = []
    for i in range(5):
        d = gr[i] / (2 * m)
        if i == j:
            d -= sum(gr[k] * t[k] for k in range(5)) / (2 * m * m) * math.copysign(1, t[j])
        exp.append(d * (1 - t[i] ** 2))
    assert torch.allclose(w.grad, torch.tensor(exp, dtype=torch.float64), atol=1e-12)

    a = DoReFaQuantizer(bits=2, signed=False, role="activation")
    x = torch.tensor([-0.4, 0.2, 0.55, 0.8, 1.7], requires_grad=True)
    out = a(x)
    assert torch.allclose(out, torch.tensor([0.0, 1 / 3, 2 / 3, 2 / 3, 1.0]))
    out.backward(torch.ones(5))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # STE inside [0, 1] only
