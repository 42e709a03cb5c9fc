"""The LightningModule: the loss it trains on, NaN losses stop with a clear error (daqkd/module.py)."""
import pytest
import torch


def test_nan_loss_stops_with_a_clear_error(make_cfg, make_module):
    _, module = make_module(make_cfg())
    x = torch.full((4, 1, 28, 28), float("nan"))
    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        module.training_step((x, torch.zeros(4, dtype=torch.long)), 0)


def test_teacher_stays_frozen_in_eval_mode(make_cfg, make_module, fmnist_batch):
    _, module = make_module(make_cfg())
    module.train()
    assert module.student.training and not module.teacher.training
    loss, _, _ = module.compute_loss(fmnist_batch)
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())


def loss_and_grads(module, batch, dtype=torch.float64):
    """The training loss and every student gradient, computed in ``dtype`` (module and inputs cast)."""
    module.to(dtype)
    module.student.zero_grad()
    x, y = batch
    loss, parts, _ = module.compute_loss((x.to(dtype), y))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}


def assert_same_function(a, b, label):
    """Two computation paths of the same network, both in float64 (``loss_and_grads``).

    Why float64, and why these bounds hold on every CPU: the paths sum in different orders (NHWC
    kernels, a compiled graph, AVX2 against AVX-512 or AMX), which changes a float result by at most
    about n·u·Σ|terms| (u = 1.1e-16 in float64; n ≲ 5·10⁴ terms for a weight gradient of 64 images of
    28×28; Σ|terms| ≲ 10³·|result| where terms cancel): under 10⁻⁸ of the largest gradient, where
    float32 gives 10⁻³. A quantizer then sees its input move by ~10⁻¹⁵ of its range instead of ~10⁻⁶,
    so an activation lands on the other side of a rounding boundary with a probability of ~10⁻⁷ per
    batch instead of many times per batch (which, through 18 quantized layers, made float32 bounds
    measured on one machine fail on another). The bounds: the loss to 10⁻⁹, every gradient to 10⁻⁶ of
    its largest entry. A layout or graph bug (NHWC read as NCHW, a dropped term) changes them at O(1)."""
    (l0, g0), (l1, g1) = a, b
    assert torch.allclose(l0, l1, rtol=1e-9, atol=0), (label, float(l0), float(l1))
    assert g0.keys() == g1.keys(), label
    for k in g0:
        tol = 1e-6 * float(g0[k].abs().max())
        assert torch.allclose(g0[k], g1[k], rtol=0, atol=tol), (label, k, float((g0[k] - g1[k]).abs().max()), tol)


@pytest.mark.kernels
def test_channels_last_gives_the_same_loss_and_gradients(make_cfg, make_module, fmnist_batch):
    """NHWC against NCHW, full precision and quantized at 8 and 2 bits (assert_same_function)."""
    for overrides in (["quantizer=fp"], ["bits=8"], ["bits=2"]):
        _, eager = make_module(make_cfg(*overrides))
        _, nhwc = make_module(make_cfg(*overrides, "speed.channels_last=true"))
        assert nhwc.student.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        a, b = loss_and_grads(eager.train(), fmnist_batch), loss_and_grads(nhwc.train(), fmnist_batch)
        assert nhwc.student.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)  # still NHWC in float64
        assert_same_function(a, b, overrides)


@pytest.mark.slow
@pytest.mark.kernels
def test_compiled_networks_give_the_same_loss_and_gradients(make_cfg, make_module, fmnist_batch):
    """torch.compile (the aot_eager backend: graph capture and AOT autograd, no code generation, so it
    runs in seconds on a CPU) against eager, on the same batch (assert_same_function); checkpoint keys
    are unchanged."""
    _, eager = make_module(make_cfg())
    _, compiled = make_module(make_cfg("speed.compile=true", "speed.compile_backend=aot_eager"))
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert_same_function(loss_and_grads(eager.train(), fmnist_batch), loss_and_grads(compiled.train(), fmnist_batch), "compiled")


@pytest.mark.slow
def test_a_compiled_fit_estimates_the_hessian_delta(make_cfg, make_module, fmnist_batch):
    """The EWGS δ estimate asks autograd for the Hessian at quantizer outputs, which a compiled graph
    keeps off the loss's path: speed.compile=true crashed the default run at epoch 0. The estimate now
    runs the same modules eagerly: the compiled student gets exactly the eager student's δ, and a real
    fit with the Hessian δ finishes."""
    from daqkd.quant import estimate_ewgs_deltas
    from daqkd.run import train

    _, eager = make_module(make_cfg())
    _, compiled = make_module(make_cfg("speed.compile=true", "speed.compile_backend=aot_eager"))
    deltas = [estimate_ewgs_deltas(m.student, lambda b, m=m: m.compute_loss(b)[0], [fmnist_batch], torch.Generator().manual_seed(0), 1)
              for m in (eager, compiled)]
    assert deltas[0] == deltas[1] and max(deltas[0].values()) > 0
    cfg = make_cfg("speed.compile=true", "speed.compile_backend=aot_eager", "quantizer.weight.delta_mode=hessian",
                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "metric.score_student=false")
    result = train(cfg)
    assert result.ok and result.student.epochs == 1


@pytest.mark.slow
def test_compile_auto_compiles_a_run_long_enough_to_pay_for_it(make_cfg, tmp_path):
    """speed.compile=auto: with a compile time on record far below the planned training time, the fit
    compiles both networks after its first steps, the Hessian δ is estimated on the compiled student
    in the next epoch, and the real compile time is kept for the next run; with one far above, it
    does not compile."""
    import json
    import shutil

    from daqkd.build import build_datamodule, build_device, build_teacher, teacher_cache_path
    from daqkd.compile import compile_key
    from daqkd.run import train

    over = ["speed.compile=auto", "speed.compile_backend=eager", "trainer.max_epochs=2", "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=1", "metric.score_student=false", "augment=minimal", "metric.score_fixed=false"]
    cfg = make_cfg(*over)
    build_teacher(cfg, build_datamodule(cfg))  # the session's teacher, copied into this test's own cache
    store = tmp_path / "compile-cache" / "compile_seconds.json"
    key = compile_key(cfg, build_device(cfg).type)
    cfg = make_cfg(*over, f"paths.cache_dir={store.parent}")
    teacher_file = teacher_cache_path(cfg, build_datamodule(cfg))
    teacher_file.parent.mkdir(parents=True)
    shutil.copy(teacher_cache_path(make_cfg(*over), build_datamodule(cfg)), teacher_file)
    store.write_text(json.dumps({key: 1e-4}))
    result = train(cfg)
    assert result.compile["compiled"] is True and result.compile["compile_s_source"] == "measured before"
    assert json.loads(store.read_text())[key] == pytest.approx(result.compile["measured_compile_s"])
    assert result.student.epochs == 2 and result.ok
    store.write_text(json.dumps({key: 1e6}))
    result = train(make_cfg(*over, f"paths.cache_dir={store.parent}", "paths.output_dir=" + str(tmp_path / "second")))
    assert result.compile["compiled"] is False
