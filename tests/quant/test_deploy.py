"""daqkd/quant/deploy.py: QLinearConv's integer arithmetic in PyTorch equals ONNX Runtime's kernel on
every element (ties included), and its gradient is the fake-quantized network's."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from daqkd.quant import deploy


def ort_qlinear_conv(x, xs, xz, w, ws, ys, yz, bias, stride, pad, group):
    import onnxruntime as ort

    consts = {"xs": np.float32(xs), "xz": np.uint8(xz), "w": w, "ws": ws, "wz": np.zeros(len(ws), np.int8), "ys": np.float32(ys),
              "yz": np.uint8(yz), "b": bias}
    node = helper.make_node("QLinearConv", ["x", *consts], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.kernels
@pytest.mark.parametrize("seed,stride,group,c_in", [(0, 1, 1, 16), (1, 2, 1, 32), (2, 1, 2, 16), (3, 1, 1, 64)])
def test_qlinear_conv_in_torch_is_onnx_runtime_bit_for_bit(seed, stride, group, c_in):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (4, c_in, 10, 10)).astype(np.uint8)
    w = rng.integers(-63, 64, (8, c_in // group, 3, 3)).astype(np.int8)  # pairs within int16 on CPUs without VNNI
    ws = rng.uniform(2e-3, 2e-2, 8).astype(np.float32)
    bias = rng.integers(-30000, 30000, 8).astype(np.int32)
    xs, xz, ys, yz = np.float32(rng.uniform(0.01, 0.05)), int(rng.integers(0, 20)), np.float32(rng.uniform(0.5, 2)), int(rng.integers(0, 60))
    got = ort_qlinear_conv(x, xs, xz, w, ws, ys, yz, bias, stride, 1, group)
    mine = deploy.qlinear_conv(torch.from_numpy(x).float(), xz, float(xs), torch.from_numpy(w).float(), torch.from_numpy(ws),
                               torch.from_numpy(bias).float(), float(ys), yz, stride=stride, padding=1, groups=group)
    assert mine.shape == got.shape and len(np.unique(got)) > 20  # spread over the grid: the arithmetic is seen
    assert (mine.numpy() == got).all()


def test_exact_half_steps_round_to_even_as_the_kernel_does():
    x = np.arange(0, 64, dtype=np.uint8).reshape(1, 1, 8, 8)
    w = np.ones((1, 1, 1, 1), np.int8)
    got = ort_qlinear_conv(x, 0.5, 0, w, np.float32([1.0]), 1.0, 0, np.zeros(1, np.int32), 1, 0, 1)
    mine = deploy.qlinear_conv(torch.from_numpy(x).float(), 0, 0.5, torch.ones(1, 1, 1, 1), torch.tensor([1.0]), None, 1.0, 0)
    assert (mine.numpy() == got).all() and (got == np.rint(x / 2)).all() and (got[0, 0, 0, 1] == 0)  # 0.5 → 0


def test_a_sum_beyond_float32_is_summed_in_float64_and_one_beyond_int32_is_refused():
    q = torch.full((1, 64, 3, 3), 255.0)
    j = torch.full((1, 64, 3, 3), 127.0)
    assert deploy.integer_conv(q[:, :8], j[:, :8]).dtype == torch.float32  # 72 · 255 · 127 < 2^24
    acc = deploy.integer_conv(q, j, torch.tensor([3.0]))  # 576 · 255 · 127 + 3 = 18,653,763 > 2^24: float32 would round it
    assert acc.dtype == torch.float64 and acc.item() == 576 * 255 * 127 + 3
    # requantized as the kernel does: the int32 sum converted to float32 (rounded to even), then × M
    y = deploy.requantize(acc, torch.tensor([1e-5]), 0)
    assert y.item() == np.rint(np.float32(np.float32(576 * 255 * 127 + 3) * np.float32(1e-5)))
    with pytest.raises(ValueError, match="int32"):
        deploy.integer_conv(torch.full((1, 128, 30, 30), 255.0), torch.full((1, 128, 30, 30), 127.0))  # 3.7e9


def test_the_gradient_is_the_fake_quantized_networks():
    """d/dx̂ and d/dŵ of the integer path equal those of conv(x̂, ŵ)/y_s with a straight-through
    rounding: the integer form is the same function in real arithmetic. In float64, so that the two
    paths' different summation orders differ by at most 2·γ_n of the sum of the terms' magnitudes."""
    torch.manual_seed(0)
    xs, ws, ys = 0.03, torch.tensor([0.01, 0.02, 0.015], dtype=torch.float64), 0.5
    x_hat = (torch.randint(0, 16, (2, 4, 6, 6)).double() * xs).requires_grad_()
    w_hat = (torch.randint(-7, 8, (3, 4, 3, 3)).double() * ws.view(-1, 1, 1, 1)).requires_grad_()
    g = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = deploy.qlinear_conv(deploy.integers(x_hat, xs), 0, xs, deploy.integers(w_hat, ws.view(-1, 1, 1, 1)), ws, None, ys, 128,
                            padding=1)
    assert torch.equal(y, torch.round(y)) and 0 < y.min() and y.max() < 255  # integers, inside the range (no clamping)
    gx, gw = torch.autograd.grad((y * g).sum(), (x_hat, w_hat))
    real = F.conv2d(x_hat, w_hat, padding=1) / ys + 128
    rx, rw = torch.autograd.grad((real * g).sum(), (x_hat, w_hat))
    # The magnitudes: the same gradients of Σ|g|·conv(|x̂|, |ŵ|)/y_s (the multiplier is float32: its
    # relative rounding, 2^-23, enters too).
    ax, aw = (t.detach().abs().requires_grad_() for t in (x_hat, w_hat))
    mx, mw = torch.autograd.grad((F.conv2d(ax, aw, padding=1) / ys * g.abs()).sum(), (ax, aw))
    gamma = 1000 * 2.0**-53 + 2 * 2.0**-23
    assert ((gx - rx).abs() <= 2 * gamma * mx).all() and ((gw - rw).abs() <= 2 * gamma * mw).all()
    assert not torch.equal(gx, torch.zeros_like(gx))
    # and the forward is the real value rounded, up to the multiplier's float32 roundings
    assert ((y - real.detach()).abs() <= 0.5 + 4 * 2.0**-24 * real.detach().abs()).all()


def test_learned_scales_get_the_fake_quantized_networks_gradient():
    """x̂ = k·x_s and ŵ = j·w_s with x_s, w_s and y_s learned (LSQ, PACT): their gradients through
    the integer path equal those of conv(x̂, ŵ)/y_s, within the multiplier's float32 roundings (every
    term of the scale's gradient is rounded by at most a few units of 2^-24 of the sum of magnitudes)."""
    torch.manual_seed(1)
    k = torch.randint(0, 16, (2, 4, 6, 6)).double()
    j = torch.randint(-7, 8, (3, 4, 3, 3)).double()
    g = torch.randn(2, 3, 6, 6, dtype=torch.float64)

    def grads(path, sign=False):
        xs, ws, ys = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.03, [0.01, 0.02, 0.015], 0.5))
        x_hat, w_hat = k * xs, j * ws.view(-1, 1, 1, 1)
        if path == "integer":
            y = deploy.qlinear_conv(deploy.integers(x_hat, xs), 0, xs, deploy.integers(w_hat, ws.view(-1, 1, 1, 1)), ws, None, ys, 128,
                                    padding=1)
        else:
            y = F.conv2d(x_hat.abs() if sign else x_hat, w_hat.abs() if sign else w_hat, padding=1) / ys + 128
        return torch.autograd.grad(((g.abs() if sign else g) * y).sum(), (xs, ws, ys))

    mags = grads("real", sign=True)
    for a, b, m in zip(grads("integer"), grads("real"), mags):
        assert ((a - b).abs() <= 16 * 2.0**-24 * m.abs()).all(), (a, b)
        assert (a != 0).all()


def cases_where_float32_decides(n: int = 6):
    """(bias, x_s, w_s, y_s) whose exact b·x_s·w_s/y_s and ONNX Runtime's float32 fl(b·fl(fl(x_s·w_s)/y_s))
    round to different integers (a 1×1 conv of a zero input: its sum is the bias)."""
    rng = np.random.default_rng(7)
    found = []
    while len(found) < n:
        b = rng.integers(1, 200_000, 100_000)
        xs, ws, ys = (rng.uniform(lo, hi, 100_000).astype(np.float32) for lo, hi in ((1e-3, 1e-1), (1e-3, 1e-1), (1e-4, 1e-2)))
        exact = b * (xs.astype(np.float64) * ws.astype(np.float64) / ys.astype(np.float64))
        m32 = (xs * ws) / ys
        f32 = b.astype(np.float32) * m32
        hit = (np.rint(exact) != np.rint(f32)) & (exact > 1) & (exact < 200)
        found += [(int(b[i]), xs[i], ws[i], ys[i]) for i in np.flatnonzero(hit)[: n - len(found)]]
    return found


@pytest.mark.parametrize("case", cases_where_float32_decides())
def test_where_float32_rounds_otherwise_than_exact_arithmetic_torch_is_onnx_runtime(case):
    """The multiplier's float32 roundings decide these outputs: the exact value rounds one way, the
    kernel the other; the torch form follows the kernel, and the reference marks each a tie."""
    from daqkd.export import reference

    b, xs, ws, ys = case
    x = np.zeros((1, 1, 1, 1), np.uint8)
    w = np.ones((1, 1, 1, 1), np.int8)
    got = ort_qlinear_conv(x, xs, 0, w, np.array([ws], np.float32), ys, 0, np.array([b], np.int32), 1, 0, 1)
    mine = deploy.qlinear_conv(torch.zeros(1, 1, 1, 1), 0, float(xs), torch.ones(1, 1, 1, 1), torch.tensor([ws]), torch.tensor([float(b)]),
                               float(ys), 0)
    ref = reference.qlinear_conv(x, xs, np.uint8(0), w, np.array([ws], np.float32), np.int8([0]), ys, np.uint8(0), bias=np.array([b]))
    assert int(mine.item()) == int(got.item()) != int(ref.value.item())  # the kernel's rounding, not the exact one
    assert ref.ties.item()


def ort_qlinear_add(a, sa, za, b, sb, zb, sc, zc):
    import onnxruntime as ort

    consts = {"as": np.float32(sa), "az": np.uint8(za), "b": b, "bs": np.float32(sb), "bz": np.uint8(zb), "cs": np.float32(sc),
              "cz": np.uint8(zc)}
    node = helper.make_node("QLinearAdd", ["a", *consts], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]


def test_qlinear_add_in_torch_is_onnx_runtime_bit_for_bit():
    """200 random scale and zero-point draws × 4,096 elements: the torch form equals ONNX Runtime's
    kernel on every element; exact arithmetic does not on all (the test sees the kernel's roundings)."""
    rng = np.random.default_rng(0)
    exact_differs = 0
    for _ in range(200):
        a, b = (rng.integers(0, 256, (1, 4096)).astype(np.uint8) for _ in range(2))
        sa, sb, sc = (np.float32(rng.uniform(0.005, 0.1)) for _ in range(3))
        za, zb, zc = (int(rng.integers(0, 256)) for _ in range(3))
        got = ort_qlinear_add(a, sa, za, b, sb, zb, sc, zc)
        mine = deploy.qlinear_add(torch.from_numpy(a).float(), float(sa), za, torch.from_numpy(b).float(), float(sb), zb, float(sc), zc)
        assert (mine.numpy() == got).all()
        exact = np.clip(np.rint((np.float64(sa) * (a - np.float64(za)) + np.float64(sb) * (b - np.float64(zb))) / np.float64(sc)) + zc, 0, 255)
        exact_differs += int((exact != got).sum())
    assert exact_differs > 0


def test_qlinear_add_gradient_is_the_exact_sums():
    a = torch.tensor([[10.0, 200.0, 250.0]], requires_grad=True)
    b = torch.tensor([[5.0, 100.0, 255.0]], requires_grad=True)
    out = deploy.qlinear_add(a, 0.04, 3, b, 0.02, 1, 0.05, 7)
    assert torch.equal(out, torch.round(out))
    out.sum().backward()
    inside = torch.tensor([[True, True, False]])  # the last one saturates at 255
    assert torch.allclose(a.grad, torch.where(inside, torch.tensor(0.04 / 0.05), torch.tensor(0.0)))
    assert torch.allclose(b.grad, torch.where(inside, torch.tensor(0.02 / 0.05), torch.tensor(0.0)))
