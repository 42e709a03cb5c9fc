"""PACT against a hand computation; α trains (daqkd/quant/pact.py)."""
import pytest
import torch
import torch.nn as nn

from daqkd.quant import (
    DoReFaQuantizer,
    EWGSQuantizer,
    LSQQuantizer,
    PACTQuantizer,
)

ALL = {"ewgs": EWGSQuantizer, "pact": PACTQuantizer, "lsq": LSQQuantizer, "dorefa": DoReFaQuantizer}

def make(name, bits, role):
    kw = {"delta_mode": "fixed"} if name == "ewgs" else {}
    return ALL[name](bits=bits, signed=role == "weight", role=role, **kw)

def test_pact_gradients_by_hand():
    q = PACTQuantizer(bits=2, signed=False, init_alpha=1.0)
    x = torch.tensor([-0.5, 0.2, 0.6, 1.0, 1.5], requires_grad=True)
    out = q(x)
    # y = clamp(x, 0, 1) = [0, .2, .6, 1, 1]; L = 3: round(3y)/3 = [0, 1/3, 2/3, 1, 1]
    assert torch.allclose(out, torch.tensor([0, 1 / 3, 2 / 3, 1, 1]))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]  # STE on 0 ≤ x < α only
    assert float(q.alpha.grad) == 9.0  # Σ g over x ≥ α = 4 + 5

@pytest.mark.parametrize("name,param", [("pact", "alpha"), ("lsq", "step")])
def test_learnable_clip_and_step_train(name, param):
    torch.manual_seed(0)
    q = make(name, 2, "activation")
    x = torch.rand(2048) * 8
    q.initialize(x)
    start = float(getattr(q, param))
    target = x.clamp(max=2.0)  # the best clip is well below the calibrated one
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    for _ in range(20):
        loss = nn.functional.mse_loss(q(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(float(getattr(q, param)) - start) > 0.1
