"""The Distiller: the weighted objective, label-free SQAKD, the method's hooks owned and released,
and a short training run with every kd= option (daqkd/kd/distiller.py)."""
import math

import pytest
import torch
import torch.nn as nn

from daqkd import build
from daqkd.config import config_dir
from daqkd.kd import DecoupledKD, Distiller, kd_kl


class Linear(nn.Module):
    """A 'network' whose logits are a fixed linear map of the input (teacher and student alike)."""

    def __init__(self, seed):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(5, 6, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.fc(x)


def pair():
    return Linear(1), Linear(2).eval()


def test_weighted_sum_and_soft_labels():
    student, teacher = pair()
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 5
    loss, parts, zs = Distiller(student, teacher, gamma=1, alpha=2, beta=0, temperature=4)(x, y)
    zt = teacher(x)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(zs, y) + 2 * kd_kl(zs, zt, 4.0))
    assert set(parts) == {"ce", "kd"}
    soft = torch.nn.functional.one_hot(y, 5).float()
    assert torch.allclose(Distiller(student, teacher, 1, 2, 0, 4)(x, soft)[0], loss)  # one-hot = hard


def test_sqakd_never_reads_labels_and_ce_alone_never_runs_the_teacher():
    student, teacher = pair()
    x = torch.randn(4, 6)
    sqakd = Distiller(student, teacher, gamma=0, alpha=1, beta=0, temperature=4)
    a, parts, _ = sqakd(x, torch.tensor([0, 1, 2, 0]))
    b, _, _ = sqakd(x, None)  # no labels at all
    assert torch.equal(a, b) and set(parts) == {"kd"}
    teacher.register_forward_pre_hook(lambda *a: pytest.fail("the teacher ran for a CE-only loss"))
    Distiller(student, teacher, gamma=1, alpha=0, beta=0, temperature=4)(x, torch.tensor([0, 1, 2, 0]))


def test_a_logit_method_gets_logits_and_no_hooks():
    student, teacher = pair()
    x, y = torch.randn(6, 6), torch.arange(6) % 5
    d = Distiller(student, teacher, 1, 0, 1.0, 4, DecoupledKD(warmup=0), "dkd")
    loss, parts, _ = d(x, y)
    assert set(parts) == {"ce", "dkd"} and parts["dkd"] > 0
    assert d._taps is None and not student.fc._forward_hooks  # no hook attached for a logit method


def test_bad_weights_are_rejected():
    student, teacher = pair()
    with pytest.raises(ValueError, match="all 0"):
        Distiller(student, teacher, 0, 0, 0, 4)
    with pytest.raises(ValueError, match="≥ 0"):
        Distiller(student, teacher, -1, 0, 0, 4)
    with pytest.raises(ValueError, match="weighs a KD method"):
        Distiller(student, teacher, 1, 0, 1.0, 4)


KD_OPTIONS = sorted(p.stem for p in (config_dir() / "kd").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("kd", KD_OPTIONS)
def test_short_training_run_with_each_kd_option(kd, session_cfg, fast_teacher, fmnist_batch):
    cfg = session_cfg(f"kd={kd}")
    dm = build.build_datamodule(cfg)
    torch.manual_seed(0)
    student = build.build_student(cfg, fast_teacher, dm)
    module = build.build_module(cfg, student, fast_teacher, dm)
    module.trainer = None
    module.scheduler_factory = None  # a plain optimizer: no Trainer to count steps here
    opt = module.configure_optimizers()
    method = module.distiller.method
    if method is not None and any(True for _ in method.parameters()):
        head_ids = {id(p) for p in method.parameters()}
        assert head_ids <= {id(p) for g in opt.param_groups for p in g["params"]}  # heads are optimised
    module.train()
    losses = []
    for _ in range(10):
        value, parts, _ = module.compute_loss(fmnist_batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0], losses
    if method is not None:
        assert parts[kd] > 0  # the method's term is in the loss, under its own name
        module.on_train_end()
        assert not student.layer1._forward_hooks and not fast_teacher.layer1._forward_hooks
