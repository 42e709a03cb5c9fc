"""The KD zoo: hand-computed values, invariances and short training runs for every kd= option."""
import math

import pytest
import torch
import torch.nn.functional as F

import daqkd.run as run
from daqkd.config import config_dir
from daqkd.kd import (
    AttentionTransfer,
    ContrastiveRepresentation,
    CorrelationCongruence,
    DecoupledKD,
    FeatureTaps,
    FitNet,
    KDBatch,
    NeuronSelectivityTransfer,
    ProbabilisticKT,
    RelationalKD,
    SimilarityPreserving,
    VariationalInformation,
)
from daqkd.models import create_model

SHAPES = [torch.Size([4, 6, 6]), torch.Size([8, 3, 3]), torch.Size([8])]
LOSSES = {
    "at": AttentionTransfer, "nst": NeuronSelectivityTransfer, "sp": SimilarityPreserving, "rkd": RelationalKD,
    "crd": ContrastiveRepresentation, "fitnet": FitNet, "cc": CorrelationCongruence, "vid": VariationalInformation,
    "pkt": ProbabilisticKT, "dkd": DecoupledKD,
}
ZERO_AT_EQUALITY = {"at", "nst", "sp", "rkd", "fitnet", "cc", "pkt", "dkd"}


def features(seed, b=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *s, generator=g).relu() for s in SHAPES]


def kd_batch(sf, tf, seed=0, b=6, classes=5):
    g = torch.Generator().manual_seed(100 + seed)
    zs, zt = torch.randn(b, classes, generator=g), torch.randn(b, classes, generator=g)
    return KDBatch(zs, zt, torch.arange(b) % classes, sf, tf, progress=1.0)


def make(name):
    torch.manual_seed(0)
    return LOSSES[name](student_shapes=SHAPES, teacher_shapes=SHAPES)


# ------------------------------------------------------------------ hand computations


def test_at_by_hand():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    t = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    a_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]  # mean_c F² = [5, 2], normalised
    a_t = [0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)]
    expected = ((a_s[0] - a_t[0]) ** 2 + (a_s[1] - a_t[1]) ** 2) / 2
    loss = AttentionTransfer()(KDBatch(None, None, None, [s], [t]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_sp_by_hand():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    g_t = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [1 / math.sqrt(2), 1 / math.sqrt(2)]]
    expected = sum((float(i == j) - g_t[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    assert float(SimilarityPreserving()(KDBatch(None, None, None, [s], [t]))) == pytest.approx(expected, rel=1e-6)


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


def test_nst_by_hand():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channels [1, 0] and [0, 1]
    t = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]]]])  # both channels normalise to [1, 0]
    # k(s,s) = mean(I²) = 0.5; k(t,t) = mean(1) = 1; k(s,t) = mean([[1,1],[0,0]]) = 0.5
    assert float(NeuronSelectivityTransfer()(KDBatch(None, None, None, [s], [t]))) == pytest.approx(0.5, rel=1e-6)


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


# ------------------------------------------------------------------ properties of every loss


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_minimum_positivity_gradients_and_batch_order(name):
    loss_fn = make(name)
    sf, tf = features(1), features(2)
    b = kd_batch(sf, tf)
    if name in ZERO_AT_EQUALITY:
        same = kd_batch(tf, tf)
        same.student_logits = same.teacher_logits
        assert float(loss_fn(same)) == pytest.approx(0.0, abs=1e-6)
    elif name == "vid":  # a Gaussian NLL: its minimum for fixed σ² is at t = μ(s), where it is ½·mean log σ²
        with torch.no_grad():
            predicted = [h.mean(f) for h, f in zip(loss_fn.heads, sf[:2])] + [tf[2]]
            floor = sum(0.5 * (F.softplus(h.rho) + h.eps).log().mean() for h in loss_fn.heads)
        assert float(loss_fn(kd_batch(sf, predicted))) == pytest.approx(float(floor), rel=1e-5)
        assert float(loss_fn(b)) > float(floor)
    mismatch = loss_fn(b)
    assert torch.isfinite(mismatch) and float(mismatch.detach()) > 0
    leaves = [f.clone().requires_grad_(True) for f in sf]
    logits = b.student_logits.clone().requires_grad_(True)
    out = loss_fn(KDBatch(logits, b.teacher_logits, b.targets, leaves, tf))
    out.backward()
    grads = [g for g in [*(f.grad for f in leaves), logits.grad] if g is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    for p in loss_fn.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    if name != "crd":  # CRD's memory bank moves with every call; all others are per-batch statistics
        loss_fn.eval()
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        pb = KDBatch(b.student_logits[perm], b.teacher_logits[perm], b.targets[perm], [f[perm] for f in sf], [f[perm] for f in tf])
        assert float(loss_fn(pb)) == pytest.approx(float(loss_fn(b)), rel=1e-5)


def test_crd_bank_is_a_checkpointed_fifo():
    crd = ContrastiveRepresentation(SHAPES, SHAPES, embed_dim=4, bank_size=8)
    assert {"bank_s", "bank_t", "bank_ptr"} <= set(crd.state_dict())
    crd.train()
    crd(kd_batch(features(1), features(2)))
    assert int(crd.bank_ptr) == 6
    crd(kd_batch(features(3), features(4)))
    assert int(crd.bank_ptr) == 4  # wrapped around


def test_taps_record_only_when_active_and_detach_cleanly():
    model = create_model("resnet20", 10, 1)
    taps = FeatureTaps(model, ["layer1", "layer3", "flatten"])
    model(torch.randn(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="did not run"):
        taps.features
    taps.active = True
    model(torch.randn(2, 1, 28, 28))
    assert [tuple(f.shape) for f in taps.features] == [(2, 16, 28, 28), (2, 64, 7, 7), (2, 64)]
    taps.remove()
    assert not model.layer1._forward_hooks and not model.flatten._forward_hooks
    with pytest.raises(ValueError, match="no such modules"):
        FeatureTaps(model, ["layer9"])


# ------------------------------------------------------------------ short training runs


KD_OPTIONS = sorted(p.stem for p in (config_dir() / "kd").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from daqkd.config import normalize_overrides

    root = tmp_path_factory.mktemp("kdzoo")
    base = ["debug=fast", f"paths.root_dir={root}", f"paths.output_dir={root}/out", f"paths.cache_dir={root}/cache"]

    def cfg(*extra):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("config", overrides=normalize_overrides([*base, *extra]))

    c = cfg()
    dm = run.build_datamodule(c)
    teacher = run.build_teacher(c, dm).model
    batch = next(iter(dm.train_loader("minimal")))
    return cfg, dm, teacher, batch


@pytest.mark.parametrize("kd", KD_OPTIONS)
def test_short_training_run_with_each_kd_option(kd, tiny_setup):
    cfg_fn, dm, teacher, batch = tiny_setup
    cfg = cfg_fn(f"kd={kd}")
    torch.manual_seed(0)
    student = run.build_student(cfg, teacher)
    run.calibrate(student, dm.calibration_batch(32))
    loss, feature, s_layers, t_layers = run.build_kd(cfg, student, teacher, dm)
    module = run.QATKDModule(student, teacher, loss, 10, run.instantiate(cfg.optim.optimizer), cfg.optim.quant_lr,
                             feature_loss=feature, student_layers=s_layers, teacher_layers=t_layers)
    opt = module.configure_optimizers()
    if feature is not None and any(True for _ in feature.parameters()):
        head_ids = {id(p) for p in feature.parameters()}
        assert head_ids <= {id(p) for g in opt.param_groups for p in g["params"]}  # heads are optimised
    module.train()
    losses = []
    for _ in range(10):
        value, parts, _ = module.compute_loss(batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0], losses
    if feature is not None:
        assert "feat" in parts
        module.on_train_end()
        assert not student.layer1._forward_hooks and not teacher.layer1._forward_hooks
