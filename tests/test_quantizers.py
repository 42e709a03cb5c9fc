"""The quantizer zoo: EWGS, PACT, LSQ and DoReFa against hand computations (METHOD.md §3)."""
import math

import pytest
import torch
import torch.nn as nn

from daqkd.models import create_model
from daqkd.quant import (
    DoReFaQuantizer,
    EWGSQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    calibrate,
    quantize_model,
    quantizer_parameters,
)

ALL = {"ewgs": EWGSQuantizer, "pact": PACTQuantizer, "lsq": LSQQuantizer, "dorefa": DoReFaQuantizer}
WEIGHT_OK = ("ewgs", "lsq", "dorefa")  # PACT is activation-only; its weights are DoReFa's


def make(name, bits, role):
    kw = {"delta_mode": "fixed"} if name == "ewgs" else {}
    return ALL[name](bits=bits, signed=role == "weight", role=role, **kw)


def cases():
    for name in ALL:
        for bits in (2, 3, 4):
            for role in ("weight", "activation"):
                if role == "weight" and name not in WEIGHT_OK:
                    continue
                yield name, bits, role


@pytest.mark.parametrize("name,bits,role", list(cases()))
def test_grid_and_range(name, bits, role):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(20_000, generator=gen) * 2
    if role == "activation":
        x = x.relu()
    q = make(name, bits, role)
    q.initialize(x)
    out = q(x)
    levels = torch.unique(out)
    assert len(levels) <= 2**bits
    assert len(levels) >= 2 ** bits - 2  # a wide input uses (nearly) the whole grid
    if name == "lsq":
        s = float(q.step)
        lo, hi = (-q.q_n * s, q.q_p * s)
        assert torch.allclose(levels / s, torch.round(levels / s), atol=1e-4)  # integer multiples of s
    elif name == "pact":
        lo, hi = 0.0, float(q.alpha)
    else:
        lo, hi = (-1.0, 1.0) if role == "weight" else (0.0, 1.0)
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    if len(levels) > 1:  # uniform grid
        d = levels.diff()
        assert torch.allclose(d, d[0].expand_as(d), rtol=1e-4)


def test_pact_gradients_by_hand():
    q = PACTQuantizer(bits=2, signed=False, init_alpha=1.0)
    x = torch.tensor([-0.5, 0.2, 0.6, 1.0, 1.5], requires_grad=True)
    out = q(x)
    # y = clamp(x, 0, 1) = [0, .2, .6, 1, 1]; L = 3: round(3y)/3 = [0, 1/3, 2/3, 1, 1]
    assert torch.allclose(out, torch.tensor([0, 1 / 3, 2 / 3, 1, 1]))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]  # STE on 0 ≤ x < α only
    assert float(q.alpha.grad) == 9.0  # Σ g over x ≥ α = 4 + 5


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


def test_lsq_signed_weights_by_hand():
    q = LSQQuantizer(bits=3, signed=True, role="weight")  # Q_n = 4, Q_p = 3
    w = torch.tensor([-3.0, -0.7, 0.26, 1.4, 2.5], requires_grad=True)
    q.initialize(w)
    s = 2 * w.detach().abs().mean().item() / math.sqrt(3)
    assert float(q.step) == pytest.approx(s)  # 2·mean|x| / √Q_p
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


@pytest.mark.parametrize("name", ["pact", "lsq", "dorefa", "ewgs"])
def test_zero_gradient_regions(name):
    """Gradients to the input vanish exactly outside the quantizer's range and nowhere else."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5000, generator=gen) * 3).relu().requires_grad_(True)
    q = make(name, 3, "activation")
    q.initialize(x.detach())
    q(x).backward(torch.ones_like(x))
    if name == "pact":
        inside = (x >= 0) & (x < q.alpha)
    elif name == "lsq":
        v = x / q.step
        inside = (v > 0) & (v < q.q_p)
    elif name == "dorefa":
        inside = (x > 0) & (x < 1)
    else:
        inside = (x > q.lower) & (x < q.upper)
    assert torch.equal(x.grad != 0, inside.detach())


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


@pytest.fixture(scope="module")
def real_batch():
    from daqkd.data import ImageDataModule

    dm = ImageDataModule("fashion_mnist", "/nonexistent", 10, 1, 28, [0.286], [0.353], train_subset=500,
                         val_size=100, batch_size=64, num_workers=0, source_options={"search_dirs": ["/usr/share/datasets/fashion-mnist"]})
    dm.setup()
    return next(iter(dm.train_loader("minimal")))


@pytest.mark.parametrize("name", list(ALL))
def test_w2a2_resnet20_trains_with_each_quantizer(name, real_batch):
    torch.manual_seed(0)
    weight = DoReFaQuantizer if name == "pact" else ALL[name]
    kw = dict(output_scale=name != "lsq")
    if name == "ewgs":
        from functools import partial

        weight = act = partial(EWGSQuantizer, delta_mode="fixed")
    else:
        act = ALL[name]
    model = quantize_model(create_model("resnet20", 10, 1), weight, act, 2, 2, "fp", **kw)
    x, y = real_batch
    calibrate(model, x)
    qp = {id(p) for p in quantizer_parameters(model)}
    opt = torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in qp], "lr": 2e-3},
        {"params": [p for p in model.parameters() if id(p) in qp], "lr": 1e-3},
    ])
    losses = []
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0] * 0.8, losses


def test_readme_quantizer_example_works(tmp_path, monkeypatch):
    """The README's "Adding a quantizer" example is real code: its class and YAML plug in as shown."""
    import re
    import sys
    from pathlib import Path

    import yaml
    from hydra.utils import instantiate

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Adding a quantizer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    conf = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    pkg = tmp_path / "readme_example"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = yaml.safe_load(conf.replace("daqkd.quant.mine", "readme_example").replace("${.weight}", "null"))
    factory = instantiate(cfg["weight"])
    model = quantize_model(create_model("resnet20", 10, 1), factory, factory, 3, 3, cfg["first_last"])
    x = torch.randn(8, 1, 28, 28)
    calibrate(model, x)
    q = model.layer1[0].conv1.weight_quantizer
    assert len(torch.unique(q(model.layer1[0].conv1.weight))) <= 2**3
    model(x).sum().backward()
    assert q.range.grad is not None
    sys.modules.pop("readme_example", None)
