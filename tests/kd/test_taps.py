"""Feature taps and the KDMethod contract, checked for every KD method (daqkd/kd/taps.py)."""
import pytest
import torch
import torch.nn.functional as F

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
    cls = LOSSES[name]
    return cls(student_shapes=SHAPES, teacher_shapes=SHAPES) if cls.uses_features else cls()

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

def test_taps_record_only_when_active_and_detach_cleanly():
    model = create_model("resnet20", 10, 1)
    taps = FeatureTaps(model, ["layer1", "layer3", "flatten"])
    model(torch.randn(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="did not run"):
        _ = taps.features
    taps.active = True
    model(torch.randn(2, 1, 28, 28))
    assert [tuple(f.shape) for f in taps.features] == [(2, 16, 28, 28), (2, 64, 7, 7), (2, 64)]
    taps.remove()
    assert not model.layer1._forward_hooks and not model.flatten._forward_hooks
    with pytest.raises(ValueError, match="no such modules"):
        FeatureTaps(model, ["layer9"])
