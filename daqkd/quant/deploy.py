"""The integer arithmetic of ONNX Runtime's QLinearConv and QLinearAdd, in PyTorch, bit for bit: the
groundwork of ``quantizer.deploy=int8`` (issue 27: train the arithmetic the integer runtime runs).
QLinearAdd (the residual additions) is at the end of the module; the rest is QLinearConv.

QLinearConv computes y = saturate(round(acc · M) + y_z) with acc = Σ (x − x_z)·w + bias in int32 and
M = fl(fl(x_s·w_s) / y_s) in float32 (onnxruntime's qlinearconv.cc), and MLAS requantizes by one
float32 multiply of fl(acc) by M, rounded half to even. Nothing in that needs integers on the
PyTorch side: small integers are exact in float32, and a sum of products of them is exact in any
order while every partial sum stays below 2^24 (``EXACT_FLOAT32``). So a convolution of the integer
tensors in float32 by a GEMM-like algorithm (no Winograd or FFT transforms, which would leave the
integers) gives acc exactly, and ``requantize`` then makes
the very float32 roundings ONNX Runtime makes: the output equals the kernel's on every element,
ties included, wherever the kernel's own sum is exact (not where AVX2's u8×s8 pairs saturate int16:
``daqkd.export.reference.int16_pairs_fit``).

The gradient is the fake-quantized network's: ``integers`` returns x̂/s with the rounding's residue
detached, so the forward value is the integer and the backward is that of x̂/s; the conv of those
times the multiplier x_s·w_s/y_s (kept in the graph) is, in real arithmetic, conv(x̂, ŵ)/y_s, so the
inputs, the weights and learned scales (LSQ's, PACT's) get the gradients they get without it.

Only float32 reproduces the kernel: ``requantize`` computes in ``acc``'s dtype (float64 in the tests
of the gradient), and the exactness of the integer sum was checked on the CPU's convolutions; on a
GPU, cuDNN chooses its algorithms itself, so a CUDA run is to be checked the same way before it is
trusted (tests/quant/test_deploy.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EXACT_FLOAT32 = 2**24  # integers up to this are exact in float32, and so is every sum of them that stays below it (float64 beyond)


def integers(x_hat: torch.Tensor, scale: torch.Tensor | float, zero: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The integers k = x̂/scale + zero of a fake-quantized tensor x̂ = scale·(k − zero), exactly (the
    float quotient is within a rounding of k; the residue is detached), with the gradient of x̂/scale."""
    v = x_hat / scale + zero
    return v + (torch.round(v) - v).detach()


def ort_multiplier(x_scale: torch.Tensor | float, w_scale: torch.Tensor, y_scale: torch.Tensor | float) -> torch.Tensor:
    """QLinearConv's requantization multiplier per output channel, as ONNX Runtime forms it: in float32,
    (x_scale · w_scale) / y_scale, in that order."""
    xs = torch.as_tensor(x_scale).to(torch.float32)
    ys = torch.as_tensor(y_scale).to(torch.float32)
    return (xs * torch.as_tensor(w_scale).to(torch.float32)) / ys  # float32 ops are ONNX Runtime's roundings; learned scales keep their gradient


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero: int, lo: int = 0, hi: int = 255) -> torch.Tensor:
    """MLAS's requantization of an int32 sum ``acc`` (held exactly in float32): fl(acc · M), clamped to
    [lo − zero, hi − zero], rounded half to even (torch.round), plus ``zero``. ``multiplier`` is per
    output channel (dim 1). The gradient is straight through the rounding (d/d acc = M inside the
    range, 0 where it clamps)."""
    m = multiplier.reshape(1, -1, *([1] * (acc.ndim - 2))).to(torch.float32)
    v = torch.clamp(acc.to(torch.float32) * m, lo - zero, hi - zero)  # int32 → float32 (rounded beyond 2^24, as MLAS does), × M
    return v + (torch.round(v) - v).detach() + zero


def exact_sum_bound(q: torch.Tensor, j: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """An upper bound on every partial sum of conv(q, j) + bias (fan-in · max|q| · max|j| + max|bias|)."""
    fan_in = j[0].numel()
    bound = fan_in * float(q.detach().abs().max()) * float(j.detach().abs().max())
    return bound + (float(bias.detach().abs().max()) if bias is not None else 0.0)


def integer_conv(q: torch.Tensor, j: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                 groups: int = 1) -> torch.Tensor:
    """acc = Σ q·j + bias, with q = x − x_z and j = w − w_z integer-valued float tensors and ``bias``
    integer-valued (units of x_s·w_s), exactly: in float32 while every partial sum stays below 2^24,
    else in float64 (an 8-bit layer of fan-in 576 reaches 576·255·127 ≈ 1.9e7); a ValueError where the
    kernel's own int32 sum could overflow."""
    bound = exact_sum_bound(q, j, bias)
    if bound >= 2**31:
        raise ValueError(f"an integer conv whose sums may reach {bound:.3g} overflows the kernel's int32 accumulator")
    if bound >= EXACT_FLOAT32:
        q, j, bias = q.double(), j.double(), bias.double() if bias is not None else None
    return F.conv2d(q, j, bias, stride, padding, dilation, groups)


def qlinear_conv(x_int: torch.Tensor, x_zero: int, x_scale, w_int: torch.Tensor, w_scale: torch.Tensor, bias_int: torch.Tensor | None,
                 y_scale, y_zero: int, stride=1, padding=0, dilation=1, groups: int = 1, lo: int = 0, hi: int = 255) -> torch.Tensor:
    """QLinearConv on integer-valued float32 tensors: the uint8 input integers ``x_int`` (zero point
    ``x_zero``), the symmetric int8 weight integers ``w_int`` (per-channel ``w_scale``), the int32
    bias; returns the output integers (clamped to [lo, hi]), as ONNX Runtime computes them. Padding
    pads x − x_z with 0, i.e. x with its zero point, as QLinearConv does."""
    acc = integer_conv(x_int - x_zero, w_int, bias_int, stride, padding, dilation, groups)
    return requantize(acc, ort_multiplier(x_scale, w_scale, y_scale), y_zero, lo, hi)


def _fma32(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add, fl(x·y + z) with one rounding: the product of two float32 values
    is exact in float64, and so is its sum with z while the operands' exponents stay within 29 bits
    of each other (true for the ratios and 8-bit integers of QLinearAdd), so one rounding to float32
    follows."""
    return (x.double() * y.double() + z.double()).float()


def qlinear_add(a_int: torch.Tensor, a_scale, a_zero: int, b_int: torch.Tensor, b_scale, b_zero: int, c_scale, c_zero: int) -> torch.Tensor:
    """QLinearAdd (com.microsoft; its inputs in its order) on uint8 integer tensors, as ONNX Runtime's x86 kernel (AVX2, chosen on
    every x86 CPU that has it) computes it: the ratios r_a = fl(a_s/c_s), r_b = fl(b_s/c_s), the fixed
    part fl(c_z − fma(r_a, a_z, fl(r_b·b_z))), then c = fma(A, r_a, fma(B, r_b, fixed)) rounded half to
    even and saturated to [0, 255]. (Matched bit for bit with ONNX Runtime 1.32 on 819,200 random
    elements over 200 random scales and zero points, where exact arithmetic differed on 5:
    tests/quant/test_deploy.py.) The gradient is that of the exact sum (a_s·(A − a_z) + b_s·(B − b_z))/c_s
    + c_z inside [0, 255]."""
    f32 = torch.float32
    a_s, b_s, c_s = (torch.as_tensor(s).to(f32) for s in (a_scale, b_scale, c_scale))
    with torch.no_grad():
        ra, rb = a_s / c_s, b_s / c_s
        inner = _fma32(ra, torch.tensor(float(a_zero)), rb * float(b_zero))
        fixed = torch.tensor(float(c_zero), dtype=f32) - inner
        c = _fma32(a_int.detach().to(f32), ra, _fma32(b_int.detach().to(f32), rb, fixed))
        kernel = torch.clamp(torch.round(c), 0, 255)
    real = torch.clamp((a_s * (a_int - a_zero) + b_s * (b_int - b_zero)) / c_s + c_zero, 0, 255)
    return real + (kernel.to(real.dtype) - real).detach()


def quantize_linear(x: torch.Tensor, scale, zero: int, lo: int = 0, hi: int = 255) -> torch.Tensor:
    """QuantizeLinear as MLAS computes it: fl(x / scale) (a float32 division), clamped to
    [lo − zero, hi − zero], rounded half to even, plus ``zero``; the gradient straight through."""
    s = torch.as_tensor(scale).to(torch.float32)
    v = torch.clamp(x.to(torch.float32) / s, lo - zero, hi - zero)
    return v + (torch.round(v) - v).detach() + zero
