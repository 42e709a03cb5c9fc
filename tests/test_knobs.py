"""The knob audit: for each config value a user sets, changing it changes what the run does
(the batches, the images scored, the gradients, the loss terms, the trained weights), not only
what the config or results.json records."""
import types

import lightning as L
import pytest
import torch

import daqkd.run as run
from daqkd.augment import SAMPLE_AUGMENTS
from daqkd.quant import EWGSQuantizer, QuantConv2d, calibrate
from daqkd.quant.callback import EWGSDeltaCallback


def first_train_batch(cfg, augment=None):
    dm = run.build_datamodule(cfg)
    return next(iter(dm.train_loader(augment or cfg.augment.name)))


def student_and_module(cfg, teacher=None):
    """The student and LightningModule exactly as run.train builds them (random teacher)."""
    dm = run.build_datamodule(cfg)
    torch.manual_seed(0)
    teacher = teacher if teacher is not None else run.build_model(cfg).eval()
    student = run.build_student(cfg, teacher)
    calibrate(student, dm.calibration_batch(cfg.quantizer.calibration_size))
    loss, feature, s_layers, t_layers = run.build_kd(cfg, student, teacher, dm)
    module = run.QATKDModule(student, teacher, loss, cfg.dataset.num_classes, run.instantiate(cfg.optim.optimizer),
                             cfg.optim.quant_lr, None, feature, s_layers, t_layers)
    return dm, module


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from daqkd.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["debug=fast", "paths.output_dir=/tmp", f"paths.root_dir={tmp_path_factory.mktemp('r')}"])
    return first_train_batch(cfg, "minimal")


# ------------------------------------------------------------------ augment


@pytest.mark.parametrize("name", sorted(n for n, f in SAMPLE_AUGMENTS.items() if f is not None))
def test_each_per_image_da_changes_the_images(make_cfg, name):
    cfg = make_cfg()
    x_da, _ = first_train_batch(cfg, name)
    x_min, _ = first_train_batch(cfg, "minimal")
    changed = (x_da != x_min).flatten(1).any(1).float().mean()
    assert changed > 0.3, f"{name} left {1 - changed:.0%} of the images as minimal made them"


@pytest.mark.parametrize("override", ["+augment.params.randaugment.magnitude=0", "+augment.params.randaugment.num_ops=1"])
def test_augment_params_reach_the_pipeline(make_cfg, override):
    x_default, _ = first_train_batch(make_cfg(), "randaugment")
    x_changed, _ = first_train_batch(make_cfg(override), "randaugment")
    assert not torch.equal(x_default, x_changed)


def test_cutmix_alpha_reaches_the_batch(make_cfg):
    _, y1 = first_train_batch(make_cfg(), "cutmix")
    _, y2 = first_train_batch(make_cfg("+augment.params.cutmix.alpha=0.2"), "cutmix")
    assert not torch.equal(y1, y2)


# ------------------------------------------------------------------ dataset


def test_flip_and_padding_change_the_training_images(make_cfg):
    plain = make_cfg("dataset.datamodule.flip=false", "dataset.datamodule.padding=0")
    x_plain, y = first_train_batch(plain, "minimal")
    dm = run.build_datamodule(plain)
    loader = dm.train_loader("minimal")
    order = loader.sampler.order(0)[: len(y)]
    clean = torch.stack([dm.pipeline(None).per_image(dm.train_set.image(int(dm.train_idx[i]))) for i, _ in order])
    assert torch.equal(x_plain, clean)  # no flip, no padding: the crop is the whole image
    x_flip, _ = first_train_batch(make_cfg("dataset.datamodule.flip=true", "dataset.datamodule.padding=0"), "minimal")
    flipped = (x_flip == clean.flip(-1)).flatten(1).all(1) & (x_flip != clean).flatten(1).any(1)
    assert 0.2 < flipped.float().mean() < 0.8  # about half the images mirrored
    x_pad, _ = first_train_batch(make_cfg("dataset.datamodule.flip=false", "dataset.datamodule.padding=4"), "minimal")
    assert (x_pad != clean).flatten(1).any(1).float().mean() > 0.5  # shifted crops


# ------------------------------------------------------------------ metric


class _Trainer(types.SimpleNamespace):
    """What DAMetricCallback.setup reads from a Trainer, on one CPU process."""

    def __init__(self, dm):
        strategy = types.SimpleNamespace(root_device=torch.device("cpu"), broadcast=lambda obj, src=0: obj)
        super().__init__(is_global_zero=True, strategy=strategy, datamodule=dm, loggers=[])


@pytest.mark.parametrize("n", [100, 200])
def test_metric_num_samples_is_what_the_teacher_scores(make_cfg, n):
    cfg = make_cfg(f"metric.num_samples={n}", "augment.pool=[minimal,cutmix]")
    dm = run.build_datamodule(cfg)
    teacher = run.build_model(cfg).eval()
    seen = []
    teacher.register_forward_pre_hook(lambda m, inp: seen.append(len(inp[0])))
    cb = run.build_selection(cfg, None, None)
    cb.setup(_Trainer(dm), types.SimpleNamespace(teacher=teacher), "fit")
    assert sum(seen) == 2 * 2 * n  # two candidates, two passes each
    assert dm.train_augment == cb.selection.selected


# ------------------------------------------------------------------ quantizer and bits


def _grad_of_inner_conv(module, batch):
    module.student.zero_grad()
    loss, _, _ = module.compute_loss(batch)
    loss.backward()
    return module.student.layer2[0].conv1.weight.grad.clone()


def test_fixed_delta_changes_the_gradients(make_cfg, batch):
    base = ["quantizer.weight.delta_mode=fixed"]
    g0 = _grad_of_inner_conv(student_and_module(make_cfg(*base, "quantizer.weight.delta=0.0"))[1], batch)
    g1 = _grad_of_inner_conv(student_and_module(make_cfg(*base, "quantizer.weight.delta=1.0"))[1], batch)
    assert not torch.allclose(g0, g1)
    q = student_and_module(make_cfg(*base, "quantizer.weight.delta=0.25"))[1].student.layer2[0].conv1.act_quantizer
    assert float(q.delta) == 0.25 and q.delta_mode == "fixed"


def test_delta_mode_decides_whether_delta_is_estimated(make_cfg, batch):
    for mode, moves in (("hessian", True), ("fixed", False)):
        dm, module = student_and_module(make_cfg(f"quantizer.weight.delta_mode={mode}"))
        cb = EWGSDeltaCallback(num_batches=1, probes=1)
        dm.set_train_augment("minimal")
        trainer = types.SimpleNamespace(datamodule=dm, current_epoch=0)
        module.log_dict = lambda *a, **k: None
        cb.on_train_epoch_start(trainer, module)
        deltas = [float(q.delta) for q in module.student.modules() if isinstance(q, EWGSQuantizer)]
        assert any(d != pytest.approx(1e-3) for d in deltas) == moves


def test_first_last_policy_changes_the_edge_layers(make_cfg, batch):
    fp = student_and_module(make_cfg("quantizer.first_last=fp"))[1].student
    int8 = student_and_module(make_cfg("quantizer.first_last=int8"))[1].student
    assert type(fp.conv1) is torch.nn.Conv2d and isinstance(int8.conv1, QuantConv2d)
    w = int8.conv1.weight_quantizer(int8.conv1.weight)
    assert 16 < len(torch.unique(w)) <= 256  # 8-bit weights on the first layer
    x = batch[0][:16]
    with torch.no_grad():
        assert not torch.allclose(fp.eval()(x), int8.eval()(x))


@pytest.mark.parametrize("bw,ba", [(2, 4), (4, 2), (3, 8)])
def test_bits_set_the_number_of_levels(make_cfg, batch, bw, ba):
    _, module = student_and_module(make_cfg(f"bits.w={bw}", f"bits.a={ba}"))
    layer = module.student.layer2[0].conv2
    assert len(torch.unique(layer.weight_quantizer(layer.weight))) == 2**bw
    seen = {}
    layer.act_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        module.student.eval()(batch[0])
    assert len(torch.unique(seen["a"])) <= 2**ba and len(torch.unique(seen["a"])) > 2 ** (ba - 1)


# ------------------------------------------------------------------ kd


def test_kd_weights_and_temperature_change_the_loss_terms(make_cfg, batch):
    def terms(*over):
        _, module = student_and_module(make_cfg(*over))
        with torch.no_grad():
            loss, parts, _ = module.compute_loss(batch)
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
    assert p6["feat"] == pytest.approx(2 * p5["feat"], rel=1e-5) and p6["feat"] > 0


# ------------------------------------------------------------------ optim


def test_learning_rates_set_the_size_of_the_first_step(make_cfg, batch):
    for lr, qlr in ((1e-3, 1e-5), (1e-2, 1e-4)):
        _, module = student_and_module(make_cfg(f"optim.optimizer.lr={lr}", f"optim.quant_lr={qlr}", "optim.optimizer.weight_decay=0"))
        module.trainer = None
        opt = module.configure_optimizers()
        w, q = module.student.layer2[0].conv1.weight, module.student.layer2[0].conv1.act_quantizer.upper
        w0, q0 = w.detach().clone(), q.detach().clone()
        loss, _, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        # Adam's first step moves every parameter with a gradient by its learning rate.
        assert (w - w0).abs().max().item() == pytest.approx(lr, rel=1e-3)
        assert abs(float(q.detach() - q0)) == pytest.approx(qlr, rel=0.1)  # float32 spacing near |u| ~ 10


# ------------------------------------------------------------------ teacher recipe


def test_teacher_recipe_values_change_the_teacher(make_cfg, tmp_path):
    from daqkd.teacher import train_teacher

    def trained(*over):
        cfg = make_cfg("teacher.limit_train_batches=2", *over)
        dm = run.build_datamodule(cfg)
        torch.manual_seed(0)
        model = run.build_model(cfg)
        steps = []
        model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None)
        recipe = {k: cfg.teacher[k] for k in ("max_epochs", "lr", "momentum", "weight_decay", "nesterov")}
        L.seed_everything(0)
        train_teacher(model, dm, recipe, {"limit_train_batches": 2, "enable_progress_bar": False, "accelerator": "cpu"})
        return model.fc.weight.detach().clone(), len(steps)

    base, n = trained()
    assert n == 2
    for over in ("teacher.lr=0.01", "teacher.momentum=0.5", "teacher.weight_decay=0.1"):
        w, _ = trained(over)
        assert not torch.allclose(w, base), over
    _, n2 = trained("teacher.max_epochs=2")
    assert n2 == 4


# ------------------------------------------------------------------ inside a real fit


class GradProbe(L.Callback):
    def __init__(self, module_name):
        self.module_name, self.grads, self.deltas = module_name, [], []

    def on_after_backward(self, trainer, pl_module):
        p = pl_module.student.get_submodule(self.module_name).weight
        self.grads.append(p.grad.detach().abs().sum().item())

    def on_train_epoch_start(self, trainer, pl_module):
        pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.deltas.append({n: float(q.delta) for n, q in pl_module.student.named_modules() if isinstance(q, EWGSQuantizer)})


@pytest.mark.slow
def test_ewgs_delta_is_estimated_in_a_real_fit_and_changes_gradients(make_cfg, batch):
    cfg = make_cfg("augment=minimal", "metric.score_fixed=false", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "dataset.datamodule.test_subset=64")
    probe = GradProbe("layer2.0.conv1")
    run.train(cfg, extra_callbacks=[probe])
    deltas = probe.deltas[0]  # at the first step, after the epoch's estimate
    assert sum(d != pytest.approx(1e-3) for d in deltas.values()) > len(deltas) // 2
    # The estimated δ changes the gradient against plain STE (δ = 0) on the same batch.
    _, module = student_and_module(make_cfg("quantizer.weight.delta_mode=fixed", "quantizer.weight.delta=0"))
    g_ste = _grad_of_inner_conv(module, batch)
    for name, q in module.student.named_modules():
        if isinstance(q, EWGSQuantizer):
            q.delta.fill_(deltas[name])
    assert not torch.allclose(_grad_of_inner_conv(module, batch), g_ste)


@pytest.mark.slow
def test_feature_taps_alone_send_gradients_in_a_real_fit(make_cfg):
    cfg = make_cfg("kd=at", "kd.gamma=0", "kd.alpha=0", "augment=minimal", "metric.score_fixed=false",
                   "quantizer.weight.delta_mode=fixed", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                   "dataset.datamodule.test_subset=64")
    probe = GradProbe("layer1.2.conv2")  # inside the first tapped stage
    run.train(cfg, extra_callbacks=[probe])
    assert len(probe.grads) == 2 and all(g > 0 for g in probe.grads)
