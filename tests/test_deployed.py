"""quantizer.deploy=int8: the student's forward is its integer export's, with the fake-quantized
student's gradients (daqkd.export.deployed)."""
from __future__ import annotations

import copy

import pytest
import torch

from daqkd.export.deployed import Int8Forward, batchnorms, check_deploy, reestimate_batchnorm
from daqkd.export.int8 import Int8Exporter, int8_forward
from daqkd.models.resnet_cifar import resnet20
from daqkd.quant.base import calibrate, quantize_model
from daqkd.quant.convert import freeze


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    t = resnet20(10, 1).train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics of their own, not the identity
            t(x)
    return t.eval(), x


@pytest.mark.parametrize("name,bits", [("ewgs", 4), ("lsq", 2)])
def test_the_deployed_forward_is_the_integer_graph_and_trains(net, quantizer_factories, name, bits):
    teacher, x = net
    wq, aq, scale = quantizer_factories[name]
    student = quantize_model(copy.deepcopy(teacher), wq, aq, bits, bits, "fp", scale)
    calibrate(student, x)
    reestimate_batchnorm(student, [x[:16], x[16:]])
    before = {id(bn): bn.running_mean.clone() for bn in batchnorms(student)}
    ranges = Int8Exporter(freeze(student)[0], x).ranges
    plain = student.eval()(x[:8]).detach()
    hooks = Int8Forward(student, ranges)
    student.train()
    for bn in batchnorms(student):
        bn.eval()
    out = student(x[:8])
    expected, _ = int8_forward(freeze(student)[0], x[:8], ranges=ranges)
    assert torch.equal(out.detach(), expected)  # the forward value is the integer model's, bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision leaves the integer graph in float32
        mixed = student(x[:8])
    assert torch.equal(mixed.detach(), expected.to(mixed.dtype))
    assert not torch.equal(out.detach(), plain)  # ... which is not the fake-quantized student's
    out.logsumexp(1).mean().backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.equal(bn.running_mean, before[id(bn)]) for bn in batchnorms(student))  # frozen
    hooks.remove()
    assert torch.equal(student.eval()(x[:8]).detach(), plain)


def test_batchnorm_reestimation_is_the_plain_average_and_restores_the_modes(net):
    teacher, x = net
    for mode in (False, True):
        model = copy.deepcopy(teacher).train(mode)
        bn = model.bn1
        momentum = bn.momentum
        reestimate_batchnorm(model, [x[:16], x[16:]])
        with torch.no_grad():
            h = torch.cat([model.conv1(x[:16]), model.conv1(x[16:])])
        assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
        assert bn.momentum == momentum and model.training == mode and bn.training == mode


def test_deploy_takes_only_its_modes():
    assert check_deploy("int8") == "int8"
    with pytest.raises(ValueError, match="quantizer.deploy='int4' is not a mode; expected one of none, int8"):
        check_deploy("int4")


def test_the_export_check_passes_the_trained_arithmetic_and_refuses_a_wrong_one(net, quantizer_factories, tmp_path, monkeypatch):
    from daqkd.errors import ExportError
    from daqkd.export import replay
    from daqkd.export.deployed import check_export
    from daqkd.export.int8 import export_int8_onnx

    teacher, x = net
    wq, aq, scale = quantizer_factories["ewgs"]
    student = quantize_model(copy.deepcopy(teacher), wq, aq, 4, 4, "fp", scale)
    calibrate(student, x)
    export_int8_onnx(freeze(student)[0], x, tmp_path / "int8.onnx")
    ok = check_export(tmp_path / "int8.onnx", x[:8])
    assert ok["integers"] > 100_000 and ok["differ"] == 0
    run_node, seen = replay.run_node, []

    def off_by_one(node, inputs):  # the second QLinearConv computes one step too high: a wiring bug, not a tie
        y = run_node(node, inputs)
        seen.append(node.op_type)
        return y + 1 if node.op_type == "QLinearConv" and seen.count("QLinearConv") == 2 else y

    monkeypatch.setattr(replay, "run_node", off_by_one)
    with pytest.raises(ExportError, match=r"at QLinearConv \S+, \d+ of \d+ integers differ away from a rounding tie; not written"):
        check_export(tmp_path / "int8.onnx", x[:8])


def test_a_deploy_module_trains_the_integer_model_and_carries_it_in_its_checkpoint(make_cfg, make_module, fmnist_batch):
    """quantizer.deploy=int8 in the LightningModule: activation (BatchNorm re-estimated and frozen,
    ranges calibrated) makes the training loss the integer model's; the checkpoint carries the ranges,
    and a fresh module loading it computes the same logits."""
    dm, module = make_module(make_cfg("quantizer.deploy=int8"))
    x, y = fmnist_batch
    dm.setup()
    module.activate_int8([x[:32], x[32:]], dm.calibration_batch(64))
    module.train()
    assert not any(bn.training for bn in batchnorms(module.student)) and module.student.training
    loss, _, logits = module.compute_loss((x[:16], y[:16]))
    expected, _ = int8_forward(freeze(module.student)[0], x[:16], ranges=module.int8.ranges)
    assert torch.equal(logits.detach(), expected)
    loss.backward()
    assert all(p.grad is not None for p in module.student.parameters())
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    _, fresh = make_module(make_cfg("quantizer.deploy=int8"))
    fresh.student.load_state_dict(module.student.state_dict())
    fresh.on_load_checkpoint(checkpoint)
    fresh.eval()
    module.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x[:16]), module(x[:16]))
    fresh.on_load_checkpoint({"deploy_int8": None})  # a checkpoint from before activation: the plain student again
    assert fresh.int8 is None


def test_deploy_refuses_what_it_cannot_train_when_the_run_is_built(make_cfg, make_module):
    from daqkd.errors import ConfigError, ExportError

    with pytest.raises(ConfigError, match=r"quantizer.deploy=int8 trains on one CPU process for now .*trainer.devices=2\)"):
        make_module(make_cfg("quantizer.deploy=int8", "trainer.devices=2"))
    with pytest.raises(ConfigError, match="quantizer.deploy=int8 needs a quantized student .* not quantizer=fp"):
        make_module(make_cfg("quantizer.deploy=int8", "quantizer=fp"))
    with pytest.raises(ConfigError, match=r"quantizer.freeze_bn_epoch=5 is never reached in trainer.max_epochs=1: .* at most 0"):
        make_module(make_cfg("quantizer.deploy=int8", "quantizer.freeze_bn_epoch=5", "trainer.max_epochs=1"))
    with pytest.raises(ExportError, match=r"quantizer.deploy=int8 cannot train this student through an integer form \(.*\); it needs a CIFAR ResNet"):
        make_module(make_cfg("quantizer.deploy=int8", "model=mobilenetv2"))


def test_a_student_copied_during_an_ewgs_delta_estimate_leaves_the_captured_output_behind():
    """deploy=int8 freezes (deep-copies) the student in every forward, also inside the EWGS δ estimate,
    where each quantizer holds its output (a non-leaf tensor, which deepcopy refuses)."""
    from daqkd.quant import EWGSQuantizer

    q = EWGSQuantizer(bits=4, signed=False, role="activation", delta_mode="fixed")
    q.capture = True
    q(torch.rand(8, requires_grad=True) * 2)
    assert q.captured is not None and q.captured.grad_fn is not None
    assert copy.deepcopy(q).captured is None and q.captured is not None


def test_when_the_integer_model_takes_over_earlier_epochs_no_longer_compete_for_the_best_checkpoint(tmp_path):
    """With quantizer.freeze_bn_epoch > 0 a fake-quantized epoch could validate higher than the integer
    model and be tested and exported in its place (seen: a 2-epoch run whose best was epoch 0)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from daqkd.module import forget_best_checkpoints

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_top_k=1)
    cb.best_k_models = {str(tmp_path / "epoch000.ckpt"): torch.tensor(0.89)}
    cb.best_model_path = cb.kth_best_model_path = str(tmp_path / "epoch000.ckpt")
    cb.best_model_score = cb.kth_value = torch.tensor(0.89)
    forget_best_checkpoints([cb])
    assert cb.best_model_path == "" and cb.best_model_score is None and cb.best_k_models == {}
    assert cb.check_monitor_top_k(None, torch.tensor(0.5))  # a lower integer-model accuracy now becomes the best


def test_an_add_of_two_dequantized_tensors_read_as_float_is_the_float_sum():
    """DQ, DQ → Add with no QuantizeLinear after it stays float in ONNX Runtime (no QLinearAdd): the
    eager graph computes it when a float operator reads it."""
    import numpy as np

    from daqkd.export.eager import EagerGraph

    g = EagerGraph(torch.zeros(1, 2))
    q = g.op("QuantizeLinear", ["image", g.const("s", np.float32(0.5)), g.const("z", np.uint8(3))], "q")
    a = g.op("DequantizeLinear", [q, g.const("s", np.float32(0.5)), g.const("z", np.uint8(3))], "dq")
    b = g.op("DequantizeLinear", [q, g.const("s", np.float32(0.25)), g.const("z", np.uint8(1))], "dq")
    out = g.op("Relu", [g.op("Add", [a, b], "add")], "relu")
    assert g.value(out).tolist() == [[0.5, 0.5]]  # (3 − 3)·0.5 + (3 − 1)·0.25
