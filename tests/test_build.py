"""The knob audit: each config value a user sets changes what the builders make and what the run
does: the gradients, the loss terms, the levels, the step sizes, the trained teacher (daqkd/build.py)."""
import types

import lightning as L
import pytest
import torch

from daqkd import build
from daqkd.augment import PAPER_POOL
from daqkd.kd import kd_kl
from daqkd.quant import EWGSQuantizer, QuantConv2d, quant_layers
from daqkd.quant.callback import EWGSDeltaCallback


def test_defaults_build_the_documented_run(make_cfg):
    """The default config builds an EWGS W2A2 ResNet-20 student trained with γ·CE + α·T²·KL (γ=1, α=2, T=4)
    and scores the paper's 7 DAs."""
    cfg = make_cfg(fast=False)
    teacher = build.build_model(cfg).eval()
    student = build.build_student(cfg, teacher)
    layers = dict(quant_layers(student))
    assert len(layers) == 18 and type(student.conv1) is torch.nn.Conv2d
    assert all(isinstance(m.weight_quantizer, EWGSQuantizer) and m.weight_quantizer.bits == 2 and m.act_quantizer.bits == 2
               for m in layers.values())
    assert student.conv1.in_channels == 1 and student.fc.out_features == 10  # Fashion-MNIST's shape
    distiller = build.build_distiller(cfg, student, teacher, None)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    total, _, zs = distiller(x, y)
    with torch.no_grad():
        zt = teacher(x)
    assert torch.allclose(total, torch.nn.functional.cross_entropy(zs, y) + 2 * kd_kl(zs, zt, 4.0))
    assert list(cfg.augment.pool) == list(PAPER_POOL) and cfg.augment.name == "auto"

def test_teacher_and_optim_recipes_follow_the_dataset(make_cfg):
    cfg = make_cfg("dataset=cifar100", "model=resnet20", "optim.scheduler=null", fast=False)
    teacher = build.build_model(cfg)
    module = build.build_module(cfg, build.build_student(cfg, teacher), teacher, None)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-6]  # the CIFAR-100 QAT recipe
    assert opt.param_groups[0]["weight_decay"] == 5e-4 and opt.param_groups[1]["weight_decay"] == 0
    assert build.teacher_recipe(cfg).lr == 0.05 and build.teacher_recipe(cfg).max_epochs == 240
    dm = build.build_datamodule(cfg)
    assert dm.mean == [0.5071, 0.4865, 0.4409] and dm.batch_size == 64


def test_fixed_delta_changes_the_gradients(make_cfg, make_module, fmnist_batch, inner_conv_grad):
    base = ["quantizer.weight.delta_mode=fixed"]
    g0 = inner_conv_grad(make_module(make_cfg(*base, "quantizer.weight.delta=0.0"))[1], fmnist_batch)
    g1 = inner_conv_grad(make_module(make_cfg(*base, "quantizer.weight.delta=1.0"))[1], fmnist_batch)
    assert not torch.allclose(g0, g1)
    q = make_module(make_cfg(*base, "quantizer.weight.delta=0.25"))[1].student.layer2[0].conv1.act_quantizer
    assert float(q.delta) == 0.25 and q.delta_mode == "fixed"

def test_delta_mode_decides_whether_delta_is_estimated(make_cfg, make_module, fmnist_batch):
    for mode, moves in (("hessian", True), ("fixed", False)):
        dm, module = make_module(make_cfg(f"quantizer.weight.delta_mode={mode}"))
        cb = EWGSDeltaCallback(num_batches=1, probes=1)
        dm.set_train_augment("minimal")
        trainer = types.SimpleNamespace(datamodule=dm, current_epoch=0, global_step=0, is_global_zero=True, world_size=1)
        module.log_dict = lambda *a, **k: None
        cb.on_train_epoch_start(trainer, module)
        deltas = [float(q.delta) for q in module.student.modules() if isinstance(q, EWGSQuantizer)]
        assert any(d != pytest.approx(1e-3) for d in deltas) == moves

def test_first_last_policy_changes_the_edge_layers(make_cfg, make_module, fmnist_batch):
    fp = make_module(make_cfg("quantizer.first_last=fp"))[1].student
    int8 = make_module(make_cfg("quantizer.first_last=int8"))[1].student
    assert type(fp.conv1) is torch.nn.Conv2d and isinstance(int8.conv1, QuantConv2d)
    w = int8.conv1.weight_quantizer(int8.conv1.weight)
    assert 16 < len(torch.unique(w)) <= 256  # 8-bit weights on the first layer
    x = fmnist_batch[0][:16]
    with torch.no_grad():
        assert not torch.allclose(fp.eval()(x), int8.eval()(x))

@pytest.mark.parametrize("bw,ba", [(2, 4), (4, 2), (3, 8)])
def test_bits_set_the_number_of_levels(make_cfg, make_module, fmnist_batch, bw, ba):
    _, module = make_module(make_cfg(f"bits.w={bw}", f"bits.a={ba}"))
    layer = module.student.layer2[0].conv2
    assert len(torch.unique(layer.weight_quantizer(layer.weight))) == 2**bw
    seen = {}
    layer.act_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        module.student.eval()(fmnist_batch[0])
    assert len(torch.unique(seen["a"])) <= 2**ba and len(torch.unique(seen["a"])) > 2 ** (ba - 1)

def test_kd_weights_and_temperature_change_the_loss_terms(make_cfg, make_module, fmnist_batch):
    dm, module = make_module(make_cfg())
    x, y = fmnist_batch

    def terms(*over):
        distiller = build.build_distiller(make_cfg(*over), module.student, module.teacher, dm)
        with torch.no_grad():
            loss, parts, _ = distiller(x, y)
        return float(loss), {k: float(v) for k, v in parts.items()}

    base_loss, base = terms()
    l2, p2 = terms("kd.gamma=3.0")
    assert p2["ce"] == pytest.approx(3 * base["ce"], rel=1e-5) and l2 == pytest.approx(base_loss + 2 * base["ce"], rel=1e-5)
    _, p3 = terms("kd.alpha=0.5")
    assert p3["kd"] == pytest.approx(base["kd"] / 4, rel=1e-5)
    _, p4 = terms("kd.temperature=1.0")
    assert p4["kd"] != pytest.approx(base["kd"], rel=1e-3)
    _, p5 = terms("kd=at", "kd.beta=500")
    _, p6 = terms("kd=at", "kd.beta=1000")
    assert p6["at"] == pytest.approx(2 * p5["at"], rel=1e-5) and p6["at"] > 0

def test_learning_rates_set_the_size_of_the_first_step(make_cfg, make_module, fmnist_batch):
    for lr, qlr in ((1e-3, 1e-5), (1e-2, 1e-4)):
        _, module = make_module(make_cfg(f"optim.optimizer.lr={lr}", f"optim.quant_lr={qlr}", "optim.optimizer.weight_decay=0",
                                         "optim.scheduler=null"))
        opt = module.configure_optimizers()
        w, q = module.student.layer2[0].conv1.weight, module.student.layer2[0].conv1.act_quantizer.upper
        w0, q0 = w.detach().clone(), q.detach().clone()
        loss, _, _ = module.compute_loss(fmnist_batch)
        loss.backward()
        opt.step()
        # Adam's first step moves every parameter with a gradient by its learning rate.
        assert (w - w0).abs().max().item() == pytest.approx(lr, rel=1e-3)
        assert abs(float(q.detach() - q0)) == pytest.approx(qlr, rel=0.1)  # float32 spacing near |u| ~ 10

@pytest.mark.slow
def test_teacher_recipe_values_change_the_teacher(make_cfg, tmp_path):
    from daqkd.teacher import train_teacher

    def trained(*over):
        cfg = make_cfg("teacher.limit_train_batches=2", *over)
        dm = build.build_datamodule(cfg)
        torch.manual_seed(0)
        model = build.build_model(cfg)
        steps = []
        model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None)
        L.seed_everything(0)
        train_teacher(model, dm, build.teacher_recipe(cfg), {"limit_train_batches": 2, "enable_progress_bar": False, "accelerator": "cpu"})
        return model.fc.weight.detach().clone(), len(steps)

    base, n = trained()
    assert n == 2
    for over in ("teacher.lr=0.01", "teacher.momentum=0.5", "teacher.weight_decay=0.1", "teacher.nesterov=false"):
        w, _ = trained(over)
        assert not torch.allclose(w, base), over
    _, n2 = trained("teacher.max_epochs=2")
    assert n2 == 4


def test_the_teacher_cache_key_covers_everything_that_shapes_the_teacher(make_cfg, tmp_path):
    """Each of these changes the trained teacher, so each must miss the cache (a new key)."""
    from fakedata import write_image

    from daqkd.teacher import cache_key

    for name, classes in (("a", ("x", "y")), ("b", ("x", "y")), ("grey", ("x", "y"))):
        for i, c in enumerate(classes):
            for k in range(6):
                write_image(tmp_path / name / "train" / c / f"{k}.png", size=16, seed=1000 * (name == "b") + 10 * i + k,
                            grey=name == "grey")
    folder = ["dataset=imagefolder", "dataset.num_classes=2", "dataset.image_size=16", "dataset.datamodule.val_size=2"]

    def key(*over):
        cfg = make_cfg(*folder, f"dataset.datamodule.source_options.folder={tmp_path}/a", *over)
        return cache_key({**build.teacher_identity(cfg, build.build_datamodule(cfg)), "recipe": vars(build.teacher_recipe(cfg))})

    base = key()
    assert key() == base  # the same config finds the same teacher
    changes = {
        "another folder of the same class count": [f"dataset.datamodule.source_options.folder={tmp_path}/b"],
        "channels": ["dataset.in_channels=1", "dataset.datamodule.mean=[0.5]", "dataset.datamodule.std=[0.25]",
                     f"dataset.datamodule.source_options.folder={tmp_path}/grey"],
        "image size": ["dataset.image_size=12"],
        "normalisation": ["dataset.datamodule.mean=[0.4,0.4,0.4]"],
        "padding": ["dataset.datamodule.padding=2"],
        "flip": ["dataset.datamodule.flip=false"],
        "the teacher's batch size": ["teacher.batch_size=32"],
        "the teacher's DA": ["teacher.augment=cutmix"],
        "the teacher's DA's parameters": ["teacher.augment=cutmix", "+augment.params.cutmix.alpha=0.5"],
        "limit_train_batches": ["teacher.limit_train_batches=3"],
        "validation split": ["dataset.datamodule.val_size=4"],
        "seed": ["seed=1"],
        "recipe": ["teacher.lr=0.05"],
        "model": ["model=resnet32"],
    }
    keys = {what: key(*over) for what, over in changes.items()}
    assert all(k != base for k in keys.values()), [w for w, k in keys.items() if k == base]
    assert len(set(keys.values())) == len(keys)
