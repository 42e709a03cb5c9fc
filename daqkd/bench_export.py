"""``python -m daqkd.bench_export [--out bench/export.json] [--quick]``: what the exported student
costs where it runs, against its FP teacher, in ONNX Runtime on this CPU (one process).

For ResNet-20 at 28×28×1 (Fashion-MNIST), ResNet-56 at 32×32×3 and ResNet-18 at 64×64×3 (large
enough to be compute-bound), with random weights (speed and size do not depend on them; BatchNorm
statistics are set on random images so that folding is realistic) and students calibrated at W8A8,
W4A4 and W2A2 (EWGS), it measures batch-1 latency, batch-64 throughput and file sizes of: the FP teacher,
the exact form (student.onnx, QDQ computed in float), and the integer-kernel form
(student_int8.onnx, QLinearConv/QLinearAdd); and the weight files (student_int.pt, the packed npz).
Ratios to the teacher are measured in the same process and session settings, every form of a model
timed in turns (``compare_bench``: a spell of load falls on all alike; ONNX Runtime's threads as
``onnx_session`` sets them, recorded).
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from daqkd.export import export_int8_onnx, export_onnx, freeze, fused_ops, save_weights
from daqkd.export.runtime import compare_bench, onnx_session_threads
from daqkd.io import atomic_write_json
from daqkd.models import create_model
from daqkd.quant import EWGSQuantizer, calibrate, quantize_model

MODELS = (("resnet20", 28, 1), ("resnet56", 32, 3), ("resnet18", 64, 3))
CALIBRATION = 64  # random images the students' ranges and the integer form's stream are calibrated on


def teacher_of(name: str, size: int, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 10, channels, image_size=size)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of random images, as a trained model would have some
        for _ in range(3):
            model(torch.randn(32, channels, size, size))
    return model.eval()


def measure(quick: bool) -> dict:
    import functools

    rounds = 2 if quick else 12
    ewgs = functools.partial(EWGSQuantizer, delta_mode="fixed")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, size, channels in MODELS[:1] if quick else MODELS:
            shape = (channels, size, size)
            teacher = teacher_of(name, size, channels)
            calib = torch.randn(CALIBRATION, *shape)
            export_onnx(teacher, tmp / "fp.onnx", shape)
            entry = {"teacher_fp32_weight_bytes": sum(p.numel() * 4 for p in teacher.parameters())}
            forms, files = {"teacher_fp": (tmp / "fp.onnx", False)}, {}
            for bits in (8, 4, 2):
                student = quantize_model(copy.deepcopy(teacher), ewgs, ewgs, bits, bits, "fp", True)
                calibrate(student, calib)
                frozen, _ = freeze(student.eval())
                exact, fast = tmp / f"exact{bits}.onnx", tmp / f"int8_{bits}.onnx"
                export_onnx(frozen, exact, shape)
                int8 = export_int8_onnx(frozen, calib, fast)
                torch.save(frozen, tmp / f"frozen{bits}.pt")
                save_weights(frozen, tmp / f"w{bits}.npz")
                forms[f"W{bits}A{bits} exact"], forms[f"W{bits}A{bits} int8"] = (exact, False), (fast, True)
                files[bits] = {"int8_ops": fused_ops(fast), "quantized_convs": int8["quantized_convs"],
                               "bytes": {"student_int.pt": (tmp / f"frozen{bits}.pt").stat().st_size,
                                         "student_weights.npz": (tmp / f"w{bits}.npz").stat().st_size,
                                         "student.onnx": exact.stat().st_size, "student_int8.onnx": fast.stat().st_size}}
            timed = compare_bench(forms, shape, rounds)  # every form in turns, so the ratios share the machine's spells
            fp = entry["teacher_fp"] = timed["teacher_fp"]
            for bits in (8, 4, 2):
                exact, fast = timed[f"W{bits}A{bits} exact"], timed[f"W{bits}A{bits} int8"]
                entry[f"W{bits}A{bits}"] = {
                    "exact": exact, "int8": fast, "int8_ops": files[bits]["int8_ops"], "quantized_convs": files[bits]["quantized_convs"],
                    "throughput_vs_teacher": {"exact": exact["throughput_b64_img_s"] / fp["throughput_b64_img_s"],
                                              "int8": fast["throughput_b64_img_s"] / fp["throughput_b64_img_s"]},
                    "latency_vs_teacher": {"exact": exact["latency_b1_ms"] / fp["latency_b1_ms"],
                                           "int8": fast["latency_b1_ms"] / fp["latency_b1_ms"]},
                    "bytes": files[bits]["bytes"],
                }
            out[f"{name}@{size}"] = entry
    return out


def table(result: dict) -> str:
    lines = ["| model | form | batch-1 latency (ms) | batch-64 throughput (img/s) | × teacher's throughput | file (MB) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model, e in result.items():
        fp = e["teacher_fp"]
        lines.append(f"| {model} | FP teacher | {fp['latency_b1_ms']:.2f} | {fp['throughput_b64_img_s']:.0f} | 1.00 | {fp['size_bytes'] / 1e6:.2f} |")
        for bits in ("W8A8", "W4A4", "W2A2"):
            for form in ("exact", "int8"):
                r = e[bits][form]
                lines.append(f"| {model} | {bits} {form} | {r['latency_b1_ms']:.2f} | {r['throughput_b64_img_s']:.0f} | "
                             f"{e[bits]['throughput_vs_teacher'][form]:.2f} | {r['size_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.bench_export", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/export.json")
    ap.add_argument("--quick", action="store_true", help="ResNet-20 only, few repeats (a smoke run)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    start = time.perf_counter()
    result = {"machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": torch.__version__, "onnxruntime": ort.__version__,
                          "ort_intra_op_threads": onnx_session_threads()},
              "models": measure(args.quick)}
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(table(result["models"]))
    print(f"\n{result['seconds']:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
