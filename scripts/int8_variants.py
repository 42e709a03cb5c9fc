"""The integer form's agreement with the training-time student, by variant (README, "Exporting a student").

    python scripts/int8_variants.py <run folder> [<run folder> ...]   # agreement and accuracy per variant
    python scripts/int8_variants.py --speed                           # throughput of the stream variants, random weights
    python scripts/int8_variants.py --trace <run folder>              # where the integers part from the frozen module's

Variants of ``export_int8_onnx``: the residual stream on 8-bit grids (shipped) or in float
(``stream_bits=None``), and the weight integers scaled by their headroom (shipped) or not.
"""
import copy
import functools
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

import daqkd.export.int8 as int8
from daqkd import build
from daqkd.export.command import load_student, locate_run, share_equal
from daqkd.export.runtime import compare_bench, onnx_session, predictions
from daqkd.quant.convert import freeze

VARIANTS = (("8-bit stream, unscaled", 8, False), ("8-bit stream, scaled (shipped)", 8, True),
            ("float stream, unscaled", None, False), ("float stream, scaled", None, True))


def export(frozen, calibration, path, stream_bits, scaled: bool) -> None:
    shipped = int8.headroom
    int8.headroom = shipped if scaled else (lambda *_: 0)
    try:
        int8.export_int8_onnx(frozen, calibration, path, stream_bits=stream_bits)
    finally:
        int8.headroom = shipped


def agreement(run: str, tmp: Path) -> None:
    config, ckpt = locate_run(run)
    student, _ = load_student(config, ckpt)
    frozen, _ = freeze(student)
    dm = build.build_datamodule(OmegaConf.create(config))
    dm.setup("test")
    loader = dm.test_dataloader()
    reference, labels = predictions(student, loader), torch.cat([y for _, y in loader])
    calibration = dm.calibration_batch(512)
    print(f"{run}: student {share_equal(reference, labels):.2%} on {len(labels)} test images")
    for name, stream_bits, scaled in VARIANTS:
        export(frozen, calibration, tmp / "m.onnx", stream_bits, scaled)
        preds = predictions(onnx_session(tmp / "m.onnx", fused=True), loader)
        print(f"  {name}: agreement {share_equal(preds, reference):.2%}, test accuracy {share_equal(preds, labels):.2%}")


def trace(run: str, tmp: Path, images: int = 1000) -> None:
    """Every quantized layer's input integers in ONNX Runtime (float stream, each weight scaling)
    against the frozen module's: the share that differ, layer by layer."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from daqkd.quant.convert import FrozenLayer

    config, ckpt = locate_run(run)
    student, _ = load_student(config, ckpt)
    frozen, _ = freeze(student)
    dm = build.build_datamodule(OmegaConf.create(config))
    dm.setup("test")
    x = torch.cat([b for b, _ in dm.test_dataloader()])[:images]
    ints = {}

    def hook(layer, inputs, _):
        a = layer.act
        ints[layer] = torch.clamp(torch.round((inputs[0] + a.in_scale * a.in_zero_rem) / a.in_scale) + a.in_zero_int, a.qmin, a.qmax)

    layers = [m for m in frozen.modules() if isinstance(m, FrozenLayer)]
    hooks = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        reference = frozen(x).argmax(1)
    for h in hooks:
        h.remove()
    # The first folded layer's integers in float64, from the first quantized layer's (exact) input
    # integers: the conv, its bias and the ReLU, then the next quantizer's rounding.
    first, second = layers[0], layers[1]
    a = first.act
    inputs = a.out_scale * (ints[first].double() - a.out_zero_int) - a.out_scale * a.out_zero_rem
    y = torch.relu(torch.nn.functional.conv2d(inputs, first.weight().double(), first.bias.double(), first.stride, first.padding))
    b = second.act
    exact = torch.clamp(torch.round((y + b.in_scale * b.in_zero_rem) / b.in_scale) + b.in_zero_int, b.qmin, b.qmax)
    print(f"frozen module against float64, first folded layer: {float((ints[second].double() != exact).double().mean()):.4%} of integers differ")
    original = int8.Int8Exporter.conv
    for scaled in (False, True):
        inputs = {}

        def conv(self, layer, xq, *args, inputs=inputs, **kwargs):
            inputs[layer] = xq.name
            return original(self, layer, xq, *args, **kwargs)

        int8.Int8Exporter.conv = conv
        try:
            export(frozen, dm.calibration_batch(512), tmp / "m.onnx", None, scaled)
        finally:
            int8.Int8Exporter.conv = original
        model = onnx.load(str(tmp / "m.onnx"))
        model.graph.output.extend(onnx.helper.make_tensor_value_info(inputs[m], onnx.TensorProto.UINT8, None) for m in layers)
        onnx.save(model, str(tmp / "m.onnx"))
        outs = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
        logits, outs = outs[0], outs[1:]
        moved = [float((torch.from_numpy(o.astype(np.float32)) != ints[m]).float().mean()) for o, m in zip(outs, layers)]
        flips = float((torch.from_numpy(logits).argmax(1) != reference).float().mean())
        print(f"weights {'scaled' if scaled else 'unscaled'}: share of input integers that differ, layer by layer: "
              + " ".join(f"{v:.2%}" for v in moved) + f"; predictions that differ: {flips:.2%}")


def speed(tmp: Path) -> None:
    from daqkd.bench_export import CALIBRATION, MODELS, teacher_of
    from daqkd.export.qdq import export_onnx
    from daqkd.quant import EWGSQuantizer, calibrate, quantize_model

    ewgs = functools.partial(EWGSQuantizer, delta_mode="fixed")
    for name, size, channels in MODELS:
        shape = (channels, size, size)
        teacher, x = teacher_of(name, size, channels), torch.randn(CALIBRATION, *shape)
        export_onnx(teacher, tmp / "fp.onnx", shape)
        for bits in (8, 4):
            student = quantize_model(copy.deepcopy(teacher), ewgs, ewgs, bits, bits, "fp", True)
            calibrate(student, x)
            frozen, _ = freeze(student.eval())
            for stream_bits in (8, None):
                export(frozen, x, tmp / f"m{stream_bits}.onnx", stream_bits, True)
            timed = compare_bench({"fp": (tmp / "fp.onnx", False), "8": (tmp / "m8.onnx", True), "float": (tmp / "mNone.onnx", True)}, shape)
            fp = timed["fp"]["throughput_b64_img_s"]
            rates = [timed[k]["throughput_b64_img_s"] / fp for k in ("8", "float")]
            print(f"{name}@{size} W{bits}A{bits}: FP {fp:.0f} img/s; 8-bit stream {rates[0]:.2f}×, float stream {rates[1]:.2f}×")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python scripts/int8_variants.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders written by daqkd.run (agreement per variant)")
    parser.add_argument("--speed", action="store_true", help="throughput of the stream variants on random-weight students")
    parser.add_argument("--trace", metavar="RUN", help="where the integers part from the frozen module's, layer by layer")
    args = parser.parse_args()
    if not (args.runs or args.speed or args.trace):
        parser.error("give run folders, --speed or --trace RUN")
    for run in [*args.runs, *([args.trace] if args.trace else [])]:
        if not (Path(run) / "results.json").is_file():
            parser.error(f"{run} is not a finished run folder (no results.json); pass one that python -m daqkd.run wrote")
    with tempfile.TemporaryDirectory() as tmp:
        if args.speed:
            speed(Path(tmp))
        if args.trace:
            trace(args.trace, Path(tmp))
        for run in args.runs:
            agreement(run, Path(tmp))
