"""python -m daqkd.export: the frozen integer module and the ONNX model agree with the training-time
student (daqkd/export.py, Quantizer.grid in daqkd/quant/)."""
import copy
import json

import pytest
import torch
import torch.nn as nn

from daqkd import build, run
from daqkd.export import ExportError, export, export_onnx, freeze, logits, onnx_session
from daqkd.quant import Quantizer, calibrate, quantize_model
from daqkd.quant.base import QuantLayerMixin


@pytest.fixture(scope="module")
def test_images(session_cfg):
    dm = build.build_datamodule(session_cfg("dataset.datamodule.test_subset=512"))
    dm.setup("test")
    return torch.cat([x for x, _ in dm.test_dataloader()])


def assert_same_up_to_rounding(ref, out, gap, max_flipped, label):
    """``out`` computes ``ref``'s function up to float rounding: the mean |Δlogit| stays under ``gap``
    of the mean |logit|, and top-1 flips (at most ``max_flipped`` of the images) happen only at
    near ties of this weak one-epoch teacher, a top-2 margin under 10 % of the mean |logit| (on a
    trained Fashion-MNIST model, 99.9-100 % of the 10,000 test images agree)."""
    scale = float(ref.abs().mean())
    assert float((ref - out).abs().mean()) < gap * scale, label
    flipped = ref.argmax(1) != out.argmax(1)
    top2 = ref.topk(2, 1).values
    assert float(flipped.float().mean()) <= max_flipped, (label, int(flipped.sum()))
    assert bool(((top2[:, 0] - top2[:, 1])[flipped] < 0.1 * scale).all()), label


def student_of(teacher, factories, bits, batch):
    wq, aq, scale = factories
    student = quantize_model(copy.deepcopy(teacher), wq, aq, bits, bits, "fp", scale)
    calibrate(student, batch)
    return student.eval()


@pytest.mark.slow  # the fast_teacher fixture trains a teacher
@pytest.mark.parametrize("bits", [2, 8])
def test_frozen_module_has_b_bit_integer_weights_and_agrees(fast_teacher, fmnist_batch, quantizer_factories, test_images, bits):
    for name, factories in quantizer_factories.items():
        student = student_of(fast_teacher, factories, bits, fmnist_batch[0])
        frozen, info = freeze(student)
        layers = [m for m in frozen.modules() if hasattr(m, "weight_int")]
        assert len(layers) == info["quantized_layers"] == sum(1 for m in student.modules() if isinstance(m, QuantLayerMixin))
        for m in layers:
            k = m.weight_int
            assert k.dtype == torch.uint8 and int(k.max()) - int(k.min()) <= 2**bits - 1 and len(k.unique()) <= 2**bits
        # BatchNorm folded into the integer layers' scales: no BatchNorm left in ResNet-20.
        assert info["batchnorm_folded"] == 19 and not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
        with torch.no_grad():
            ref, out = student(test_images), frozen(test_images)
        # BatchNorm folded into the scales sums in another order, so an activation near a rounding
        # boundary can land one grid step over: measured mean |Δlogit| 0.02-0.4 % of the mean |logit|
        # (2.5 % at 2 bits on another one-epoch teacher), 0-8 flips of 512, every one with a top-2
        # margin under 2.5 %; a wrong fold or zero point gives tens of percent.
        assert_same_up_to_rounding(ref, out, 0.03, 0.03, (name, bits))


@pytest.mark.slow  # the fast_teacher fixture trains a teacher
def test_frozen_weights_dequantize_to_the_trained_ones(fast_teacher, fmnist_batch, quantizer_factories):
    """Before BatchNorm folding changes the scales: s·(k − z) is exactly the fake-quantized weight."""
    student = student_of(fast_teacher, quantizer_factories["dorefa"], 3, fmnist_batch[0])
    from daqkd.export import FrozenLayer

    layer = student.layer2[0].conv1
    frozen = FrozenLayer(layer)
    expected = layer.weight_quantizer(layer.weight) * layer.output_scale
    assert torch.allclose(frozen.weight(), expected, atol=1e-6)


@pytest.mark.slow  # the fast_teacher fixture trains a teacher
@pytest.mark.parametrize("name,bits", [("ewgs", 2), ("lsq", 8), ("pact", 4)])
def test_onnx_passes_the_checker_and_agrees_in_onnx_runtime(fast_teacher, fmnist_batch, quantizer_factories, test_images,
                                                            tmp_path, name, bits):
    import onnx

    frozen, _ = freeze(student_of(fast_teacher, quantizer_factories[name], bits, fmnist_batch[0]))
    path = export_onnx(frozen, tmp_path / "s.onnx", (1, 28, 28))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 18 and ops.count("DequantizeLinear") == 36  # activations; and weights from integers
    int_weights = [t for t in model.graph.initializer if t.name.endswith("weight_int")]
    assert int_weights and all(t.data_type == onnx.TensorProto.UINT8 for t in int_weights)
    loader = [(test_images[i:i + 128], None) for i in range(0, len(test_images), 128)]
    # The same integer graph: ORT's float sums differ from torch's in the last bits, which moves an
    # activation across a rounding boundary now and then (one grid step). Measured on one-epoch
    # teachers: mean |Δlogit| 0.5e-4 to 7e-4 of the mean |logit|, 0-3 flips of 512; a shifted zero
    # point or another rounding rule moves every activation and is far above the bound.
    assert_same_up_to_rounding(logits(frozen, loader), logits(onnx_session(path), loader), 3e-3, 0.02, (name, bits))


@pytest.mark.slow  # trains a student
def test_export_of_a_run_folder_writes_both_forms(make_cfg, tmp_path):
    out = tmp_path / "run"
    run.train(make_cfg(f"paths.output_dir={out}", "augment=minimal", "bits=4"))
    report = export(out, test_subset=256)
    # 256 images of a briefly trained student: room for a near tie or two, as above.
    assert report["agreement_frozen"] >= 0.98 and report["agreement_onnx"] >= 0.98
    assert (out / "export" / "student.onnx").is_file() and (out / "export" / "student_int.pt").is_file()
    assert json.loads((out / "export" / "export.json").read_text())["bits_w"] == 4
    frozen = torch.load(out / "export" / "student_int.pt", weights_only=False)
    assert any(m.weight_int.max() <= 15 for m in frozen.modules() if hasattr(m, "weight_int"))


def test_export_errors_name_the_problem(tmp_path):
    from daqkd.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config"):
        export(tmp_path / "empty")

    class Opaque(Quantizer):  # a quantizer that cannot describe its grid
        def forward(self, x):
            return x

    model = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3)), Opaque, Opaque, 4, 4)
    with pytest.raises(ExportError, match="Opaque.*grid"):
        freeze(model)
