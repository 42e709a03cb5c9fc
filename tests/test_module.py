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


def loss_and_grads(module, batch):
    module.student.zero_grad()
    loss, parts, _ = module.compute_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}


def test_channels_last_gives_the_same_loss_and_gradients(make_cfg, make_module, fmnist_batch):
    """NHWC kernels sum in another order. In full precision the loss agrees to float tolerance and the
    gradients to a cosine of 0.999 (they come out of large cancelling terms here: a random teacher
    gives a KD loss near 48). Quantized, values near a rounding boundary also land on the other side
    and the change grows through 18 layers (random-weight W8A8 logits differ by 0.2 % of their range,
    as they do between the training-time and the exported model): at W8A8 the loss agrees to 1 % and
    every gradient points the same way. A layout bug (NHWC read as NCHW) gives unrelated numbers."""
    for overrides, rtol, cosine in ((["quantizer=fp"], 1e-5, 0.999), (["bits=8"], 1e-2, 0.9)):
        _, eager = make_module(make_cfg(*overrides))
        _, nhwc = make_module(make_cfg(*overrides, "speed.channels_last=true"))
        assert nhwc.student.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        (l0, g0), (l1, g1) = loss_and_grads(eager.train(), fmnist_batch), loss_and_grads(nhwc.train(), fmnist_batch)
        assert torch.allclose(l0, l1, rtol=rtol) and g0.keys() == g1.keys(), overrides
        for k in (k for k in g0 if g0[k].ndim >= 2):  # every conv and linear weight
            assert torch.nn.functional.cosine_similarity(g0[k].flatten(), g1[k].flatten(), dim=0) > cosine, (overrides, k)


@pytest.mark.slow
def test_compiled_networks_give_the_same_loss_and_gradients(make_cfg, make_module, fmnist_batch):
    """torch.compile (the aot_eager backend: graph capture and AOT autograd, no code generation, so it
    runs in seconds on a CPU) against eager, on the same batch; checkpoint keys are unchanged."""
    _, eager = make_module(make_cfg())
    _, compiled = make_module(make_cfg("speed.compile=true", "speed.compile_backend=aot_eager"))
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    (l0, g0), (l1, g1) = loss_and_grads(eager.train(), fmnist_batch), loss_and_grads(compiled.train(), fmnist_batch)
    assert torch.allclose(l0, l1, rtol=1e-5) and g0.keys() == g1.keys()
    assert all(torch.allclose(g0[k], g1[k], rtol=1e-4, atol=1e-6) for k in g0)


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
    assert result["status"] == "ok" and result["student"]["epochs"] == 1
