"""A second runtime for a trained student: torchao's PT2E flow (X86InductorQuantizer) and inductor.

    pip install torchao
    python scripts/torchao_pt2e_trial.py <run folder> [--freeze]

Exports the frozen student (daqkd.quant.convert, its learned grids as float fake-quantization) with
torch.export, lets the X86 quantizer insert its own 8-bit Q/DQ (per-tensor uint8 activations from a
histogram observer, per-channel symmetric int8 weights from max-abs), calibrates on 512 training
images, converts, compiles with inductor, and prints its agreement with the training-time student
on the test set and its speed against the FP teacher compiled the same way. --freeze asks inductor
for its int8 convolution kernels (torch 2.14.1 with torchao 0.18 fails there on this CPU: README,
"Exporting a student").
"""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from daqkd import build
from daqkd.export.command import load_student, locate_run, share_equal
from daqkd.export.runtime import predictions
from daqkd.quant.convert import FrozenActivation, FrozenLayer, freeze


def plain(frozen: nn.Module) -> nn.Module:
    """The frozen module with its two custom ops as plain torch ops (what the X86 quantizer's
    patterns match): each activation quantizer as round/clamp, each weight as a float parameter."""

    def act_forward(self, x):
        v = x + self.in_scale * self.in_zero_rem if self.in_zero_rem else x
        v = v.clamp(self.in_scale * (self.qmin - self.in_zero_int), self.in_scale * (self.qmax - self.in_zero_int))
        y = (torch.round(v / self.in_scale) + self.in_zero_int - self.out_zero_int) * self.out_scale
        return y - self.out_scale * self.out_zero_rem if self.out_zero_rem else y

    def layer_forward(self, x):
        x = self.act(x) if self.act is not None else x
        if self.kind == "conv":
            return F.conv2d(x, self.w_float, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, self.w_float, self.bias)

    for m in frozen.modules():
        if isinstance(m, FrozenActivation):
            m.forward = act_forward.__get__(m)
        if isinstance(m, FrozenLayer):
            m.w_float = nn.Parameter(m.weight().detach().clone(), requires_grad=False)
            m.forward = layer_forward.__get__(m)
    return frozen


def speed(fn, shape) -> tuple[float, float]:
    """(batch-1 latency ms, batch-64 images/s), medians."""
    one, many = torch.randn(1, *shape), torch.randn(64, *shape)
    times1, times64 = [], []
    with torch.no_grad():
        for _ in range(3):
            fn(one), fn(many)
        for _ in range(30):
            t = time.perf_counter()
            fn(one)
            times1.append(time.perf_counter() - t)
        for _ in range(10):
            t = time.perf_counter()
            fn(many)
            times64.append(time.perf_counter() - t)
    return 1000 * statistics.median(times1), 64 / statistics.median(times64)


def main() -> None:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    config, ckpt = locate_run(sys.argv[1])
    student, teacher = load_student(config, ckpt)
    frozen = plain(freeze(student)[0]).eval()
    dm = build.build_datamodule(OmegaConf.create(config))
    dm.setup("test")
    loader = dm.test_dataloader()
    reference, labels = predictions(student, loader), torch.cat([y for _, y in loader])
    calibration = dm.calibration_batch(512)
    shape = tuple(calibration.shape[1:])
    fp_latency, fp_rate = speed(torch.compile(teacher.eval()), shape)
    with torch.no_grad():
        exported = torch.export.export(frozen, (calibration[:64],), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        model = prepare_pt2e(exported.module(), quantizer)
        for i in range(0, len(calibration), 64):
            model(calibration[i:i + 64])
        model = convert_pt2e(model)
        with torch._inductor.config.patch(freezing="--freeze" in sys.argv):
            compiled = torch.compile(model)
            preds = torch.cat([compiled(x).argmax(1) for x, _ in loader])
            latency, rate = speed(compiled, shape)
    print(f"FP teacher (inductor): {fp_rate:.0f} img/s, {fp_latency:.2f} ms")
    print(f"PT2E X86 int8: agreement {share_equal(preds, reference):.2%}, test accuracy {share_equal(preds, labels):.2%} "
          f"(student {share_equal(reference, labels):.2%}); {rate:.0f} img/s ({rate / fp_rate:.2f}× the FP teacher), {latency:.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
