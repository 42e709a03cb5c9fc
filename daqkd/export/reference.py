"""A NumPy reference of the ONNX Runtime operators that ``student_int8.onnx`` runs, written from the
ONNX operator definitions, and a checker that compares ONNX Runtime with it node by node.

Every operator is computed in exact real arithmetic on its (float32 or integer) inputs: integer sums
in float64, exact while they stay below 2^53 (asserted), scales as float64 products and quotients
of the float32 scales (a relative error of at most 2^-52, far below the bounds below), and rounded
half to even, as the definitions say (QuantizeLinear, QLinearConv, QLinearMatMul; QLinearAdd, a
com.microsoft operator, defines C = round((a_s·(A − a_z) + b_s·(B − b_z)) / c_s) + c_z).

ONNX Runtime computes the same definitions with float32 roundings: QLinearConv and QLinearMatMul
multiply the int32 sum by the float32 ratio x_s·w_s/y_s, itself rounded twice; QuantizeLinear
divides in float32; QLinearAdd multiplies by the rounded ratios a_s/c_s and b_s/c_s and adds in
float32. So where the exact value lies within those roundings of a half integer, the kernel may round
the other way. Each integer operator here returns, beside its integers, a mask of such **ties**, from
a bound derived for it (below, in units of u = 2^-24, float32's unit roundoff, first order in u, with
a factor 2 of margin for the second-order terms); the kernel and the reference may differ at a tie and
nowhere else. A float operator (the full-precision first and last layers, the average pooling) returns
its exact value and a bound on the kernel's error (the standard γ_n = n·u/(1 − n·u) of an n-term sum).

``compare(path, images)`` runs ONNX Runtime on a model (after its own graph optimizations, so the
operators are the fused ones it runs: QLinearConv, QLinearAdd, ...), exposes every node's output,
and recomputes every node here from ONNX Runtime's own inputs to it: layer by layer, the integers
must be equal except at counted ties, and the floats within their bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

U = 2.0**-24  # float32's unit roundoff
EXACT = 2.0**53  # integers below this are exact in float64

_INT_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.int32): (-(2**31), 2**31 - 1)}


@dataclass
class Out:
    """An operator's output: its exact value (integers, or a float's exact value in float64) and
    either the tie mask (integers) or an elementwise bound on a float32 kernel's error (floats)."""

    value: np.ndarray
    ties: np.ndarray | None = None
    bound: np.ndarray | None = None
    int16_risk: bool = False  # u8×s8 products whose pairs may exceed int16 (see ``int16_pairs_fit``)

    @property
    def is_int(self) -> bool:
        return self.ties is not None


def gamma(n: int) -> float:
    """γ_n: the relative error bound of an n-term float32 sum, in any order (Higham, Thm 3.1)."""
    return n * U / (1 - n * U)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def round_to(v: np.ndarray, zero, dtype, tol: np.ndarray) -> Out:
    """``saturate(round_half_even(v) + zero)`` in ``dtype``; a tie where ``v`` is within ``tol`` of
    a half integer and the two neighbours saturate to different integers."""
    lo, hi = _INT_RANGE[np.dtype(dtype)]
    zero = _f64(zero)
    q = np.clip(np.rint(v) + zero, lo, hi)
    down = np.floor(v)
    other = np.clip(np.where(np.rint(v) == down, down + 1, down) + zero, lo, hi)
    ties = (np.abs(v - down - 0.5) <= tol) & (other != q)
    return Out(q.astype(dtype), ties=ties)


def _scalar(zero, dtype) -> np.ndarray:
    """A per-tensor zero point (a scalar or a 1-element array; absent: 0) as a 0-d array of ``dtype``."""
    return np.asarray(0 if zero is None else zero).reshape(()).astype(dtype)


def _channel(a, ndim: int, axis: int = 1) -> np.ndarray:
    """A per-tensor scalar or a per-channel vector, shaped to broadcast along ``axis``."""
    a = _f64(a)
    if a.ndim == 0 or a.size == 1:
        return a.reshape(())
    shape = [1] * ndim
    shape[axis] = a.size
    return a.reshape(shape)


# ---------------------------------------------------------------------- quantization


def quantize_linear(x, scale, zero, axis: int = 1) -> Out:
    """QuantizeLinear: saturate(round(x / scale) + zero), in the zero point's type. The kernel divides
    in float32 (one rounding: |error| ≤ u·|x/s|): tolerance 2u·|x/s|."""
    zero = np.asarray(zero)
    x = np.asarray(x)
    v = _f64(x) / _channel(np.float32(scale) if np.ndim(scale) == 0 else scale, x.ndim, axis)
    return round_to(v, _channel(zero, x.ndim, axis), zero.dtype, 2 * U * np.abs(v))


def dequantize_linear(q, scale, zero, axis: int = 1) -> Out:
    """DequantizeLinear: (q − zero)·scale. The kernel multiplies once in float32: bound u·|value|."""
    q = np.asarray(q)
    v = (_f64(q) - _channel(zero, q.ndim, axis)) * _channel(scale, q.ndim, axis)
    return Out(v, bound=U * np.abs(v))


# ---------------------------------------------------------------------- convolution and matmul


def int16_pairs_fit(x: np.ndarray, w: np.ndarray) -> bool:
    """Whether ``x``'s and ``w``'s raw integers keep every sum of two products within int16.

    On x86 CPUs without VNNI, ONNX Runtime's uint8 × int8 kernels (AVX2's vpmaddubsw) add adjacent
    pairs of products of the raw integers in int16 with saturation, so a pair beyond 32,767 is
    clipped and the sum is no longer the definition's (this machine, AVX2: a random 3×3 conv with
    weights in [−127, 127] moved 616 of 1,458 outputs by up to 19 steps; with |w| ≤ 63, none). The
    reference computes the definition; where this does not hold, the kernel may differ on such CPUs
    (ONNX Runtime's quantization tool offers ``reduce_range``, 7-bit weights, for the same reason)."""
    if np.asarray(x).dtype != np.uint8 or np.asarray(w).dtype != np.int8:
        return True
    return 2 * int(np.asarray(x).max(initial=0)) * int(np.abs(np.asarray(w).astype(np.int32)).max(initial=0)) <= 32767


def _pad(x: np.ndarray, pads: list[int], value: float) -> np.ndarray:
    k = len(pads) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(pads[i], pads[i + k]) for i in range(k)]
    return np.pad(x, widths, constant_values=value)


def conv_sum(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int) -> np.ndarray:
    """The plain 2-D convolution sum Σ x·w (no bias) in float64, NCHW / OIHW. Exact for integer
    inputs while every partial sum stays below 2^53."""
    x = _f64(x)
    w = _f64(w)
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    x = _pad(x, list(pads), 0.0)
    sh, sw = strides
    dh, dw = dilations
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    oh, ow = windows.shape[2], windows.shape[3]
    out = np.empty((n, o, oh, ow))
    og = o // group
    for g in range(group):
        cols = windows[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cg * kh * kw)
        kern = w[g * og:(g + 1) * og].reshape(og, cg * kh * kw)
        out[:, g * og:(g + 1) * og] = (cols @ kern.T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2)
    return out


def _conv_attrs(w_shape, strides=None, pads=None, dilations=None):
    k = len(w_shape) - 2
    return list(strides or [1] * k), list(pads or [0] * 2 * k), list(dilations or [1] * k)


def qlinear_conv(x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias=None, strides=None, pads=None, dilations=None,
                 group: int = 1) -> Out:
    """QLinearConv: y = saturate(round((Σ (x − x_z)(w − w_z) + bias) · x_s·w_s/y_s) + y_z), the sum
    in int32 (exact here), per output channel for a per-channel w_s. The kernel multiplies the sum
    (exact in float32 below 2^24, else one rounding) by the float32 ratio fl(fl(x_s·w_s)/y_s) (two
    roundings), once more rounded: ≤ 4u·|v|; tolerance 8u·|v|."""
    x, w = np.asarray(x), np.asarray(w)
    strides, pads, dilations = _conv_attrs(w.shape, strides, pads, dilations)
    xs = _f64(x) - _f64(x_zero)
    ws = _f64(w) - _channel(w_zero, w.ndim, 0)
    acc = conv_sum(xs, ws, strides, pads, dilations, group)
    fan_in = int(np.prod(w.shape[1:]))
    assert fan_in * 256.0 * 256.0 < EXACT, "the integer sum would not be exact in float64"
    if bias is not None:
        acc = acc + _channel(np.asarray(bias), acc.ndim)
    ratio = _f64(np.float32(x_scale)) * _channel(w_scale, acc.ndim) / _f64(np.float32(y_scale))
    v = acc * ratio
    y_zero = np.asarray(y_zero)
    out = round_to(v, y_zero, y_zero.dtype, 8 * U * np.abs(v))
    out.int16_risk = not int16_pairs_fit(x, w)
    return out


def qlinear_matmul(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero) -> Out:
    """QLinearMatMul: y = saturate(round(Σ (a − a_z)(b − b_z) · a_s·b_s/y_s) + y_z), per column for a
    per-column b_s; the same arithmetic and tolerance as QLinearConv."""
    a, b = np.asarray(a), np.asarray(b)
    acc = (_f64(a) - _f64(a_zero)) @ (_f64(b) - _f64(b_zero))
    assert a.shape[-1] * 256.0 * 256.0 < EXACT
    v = acc * (_f64(np.float32(a_scale)) * _f64(b_scale) / _f64(np.float32(y_scale)))
    y_zero = np.asarray(y_zero)
    out = round_to(v, y_zero, y_zero.dtype, 8 * U * np.abs(v))
    out.int16_risk = not int16_pairs_fit(a, b)
    return out


def qlinear_add(a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero) -> Out:
    """QLinearAdd (com.microsoft): c = saturate(round((a_s·(a − a_z) + b_s·(b − b_z)) / c_s) + c_z).
    The kernel rounds the ratios r_a = a_s/c_s and r_b = b_s/c_s, forms c_z − (r_a·a_z + r_b·b_z) and
    then r_a·a + r_b·b + that with fused multiply-adds (the vector kernels) or r_a·(a − a_z) + ... (the
    scalar one): with M = r_a·(|a| + a_z) + r_b·(|b| + b_z) + |c_z|, every intermediate is at most M
    and at most seven roundings touch it, so |error| ≤ 7u·M; tolerance 16u·M."""
    a, b = np.asarray(a), np.asarray(b)
    a_zero, b_zero = (_scalar(z, x.dtype) for z, x in ((a_zero, a), (b_zero, b)))
    c_zero = _scalar(c_zero, a.dtype)
    cs = _f64(np.float32(np.asarray(c_scale).reshape(())))
    ra, rb = _f64(np.float32(np.asarray(a_scale).reshape(()))) / cs, _f64(np.float32(np.asarray(b_scale).reshape(()))) / cs
    v = ra * (_f64(a) - _f64(a_zero)) + rb * (_f64(b) - _f64(b_zero))
    big = ra * (np.abs(_f64(a)) + abs(float(a_zero))) + rb * (np.abs(_f64(b)) + abs(float(b_zero))) + abs(float(c_zero))
    return round_to(v, c_zero, c_zero.dtype, 16 * U * big)


# ---------------------------------------------------------------------- the rest of the graph


def max_pool(x, kernel_shape, strides=None, pads=None, ceil_mode: int = 0) -> np.ndarray:
    """MaxPool: exact on integers and floats alike (a maximum rounds nothing); padding never wins."""
    x = np.asarray(x)
    k = len(kernel_shape)
    strides, pads = list(strides or [1] * k), list(pads or [0] * 2 * k)
    if ceil_mode:
        raise NotImplementedError("MaxPool with ceil_mode=1 is not in the reference")
    lowest = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    xp = _pad(_f64(x), pads, lowest)
    win = np.lib.stride_tricks.sliding_window_view(xp, tuple(kernel_shape), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    return win.max(axis=(-2, -1)).astype(x.dtype)


def conv_float(x, w, b=None, strides=None, pads=None, dilations=None, group: int = 1) -> Out:
    """Conv in float: the exact sum, and the kernel's bound γ_{n+1}·(Σ|x||w| + |b|), any order."""
    w = np.asarray(w)
    strides, pads, dilations = _conv_attrs(w.shape, strides, pads, dilations)
    v = conv_sum(x, w, strides, pads, dilations, group)
    mag = conv_sum(np.abs(_f64(x)), np.abs(_f64(w)), strides, pads, dilations, group)
    if b is not None:
        v, mag = v + _channel(b, v.ndim), mag + np.abs(_channel(b, v.ndim))
    return Out(v, bound=gamma(int(np.prod(w.shape[1:])) + 1) * mag)


def gemm(x, w, b=None, trans_b: int = 0) -> Out:
    """Gemm (alpha = beta = 1) in float, with the bound γ_{n+1}·(|x||w| + |b|)."""
    x, w = _f64(x), _f64(w)
    w = w.T if trans_b else w
    v, mag = x @ w, np.abs(x) @ np.abs(w)
    if b is not None:
        v, mag = v + _f64(b), mag + np.abs(_f64(b))
    return Out(v, bound=gamma(w.shape[0] + 1) * mag)


def global_average_pool(x) -> Out:
    """GlobalAveragePool in float: the mean over H·W, bound γ_{n+1}·mean|x| (a sum and a division)."""
    x = _f64(x)
    n = x.shape[2] * x.shape[3]
    return Out(x.mean(axis=(2, 3), keepdims=True), bound=gamma(n + 1) * np.abs(x).mean(axis=(2, 3), keepdims=True))


# ---------------------------------------------------------------------- node by node against ONNX Runtime


def node_attributes(node) -> dict:
    """An ONNX node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def run_node(node, inputs: list, consts: dict) -> Out | np.ndarray:
    """One node of ONNX Runtime's optimized graph, computed here from ``inputs`` (the arrays it read,
    ``None`` for an absent optional input). Exact integer results come back as arrays."""
    op, at = node.op_type, check_attributes(node)
    get = (lambda i: inputs[i] if i < len(inputs) else None)
    if op == "QuantizeLinear":
        zero = get(2) if get(2) is not None else np.uint8(0)
        return quantize_linear(get(0), get(1), zero, at.get("axis", 1))
    if op == "DequantizeLinear":
        return dequantize_linear(get(0), get(1), get(2) if get(2) is not None else 0, at.get("axis", 1))
    if op == "QLinearConv":
        if at.get("channels_last", 0):
            raise NotImplementedError("channels_last QLinearConv (ORT's NHWC layout) is not in the reference: optimize at ORT_ENABLE_EXTENDED")
        return qlinear_conv(*inputs[:8], bias=get(8), strides=at.get("strides"), pads=at.get("pads"), dilations=at.get("dilations"),
                            group=at.get("group", 1))
    if op == "QLinearMatMul":
        return qlinear_matmul(*inputs[:8])
    if op == "QLinearAdd":
        return qlinear_add(*inputs[:8])
    if op in ("Conv", "FusedConv"):
        _check_auto_pad(node, at)
        out = conv_float(get(0), get(1), get(2), at.get("strides"), at.get("pads"), at.get("dilations"), at.get("group", 1))
        return _activation(out, at, node)
    if op in ("Gemm", "FusedGemm"):
        if at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0 or at.get("transA", 0):
            raise NotImplementedError("Gemm with alpha, beta or transA")
        return _activation(gemm(get(0), get(1), get(2), at.get("transB", 0)), at, node)
    if op == "GlobalAveragePool":
        return global_average_pool(get(0))
    if op == "MaxPool":
        _check_auto_pad(node, at)
        if any(d != 1 for d in at.get("dilations", [1])) or at.get("storage_order", 0):
            raise NotImplementedError(f"MaxPool with dilations or storage_order (node {node.name})")
        return max_pool(get(0), at["kernel_shape"], at.get("strides"), at.get("pads"), at.get("ceil_mode", 0))
    if op == "Clip":
        x = get(0)
        return np.clip(x, get(1) if get(1) is not None else x.min(), get(2) if get(2) is not None else x.max()).astype(x.dtype)
    if op == "Relu":
        return np.maximum(get(0), 0).astype(get(0).dtype)
    if op == "Identity":
        return get(0)
    if op == "Flatten":
        x, axis = get(0), at.get("axis", 1)
        axis = axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Pad":
        if at.get("mode", b"constant") not in (b"constant", "constant") or get(3) is not None:
            raise NotImplementedError(f"Pad other than constant over every axis (node {node.name})")
        value = get(2) if get(2) is not None else 0
        return _pad(get(0), list(get(1)), value).astype(get(0).dtype)
    if op == "Slice":
        x = get(0)
        starts, ends = get(1), get(2)
        axes = get(3) if get(3) is not None else np.arange(len(starts))
        steps = get(4) if get(4) is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(min(e, x.shape[int(a)])), int(st))
        return x[tuple(index)]
    if op == "Add":
        a, b = _f64(get(0)), _f64(get(1))
        v = a + b
        return Out(v, bound=U * np.abs(v))
    raise NotImplementedError(f"the reference has no {node.op_type} (node {node.name})")


# The attributes each operator's reference models; any other raises NotImplementedError, so that an
# attribute the reference would ignore never makes a silent, wrong comparison.
_CONV = ("strides", "pads", "dilations", "group", "kernel_shape", "auto_pad")
_KNOWN_ATTRS: dict[str, tuple[str, ...]] = {
    "QuantizeLinear": ("axis",), "DequantizeLinear": ("axis",), "QLinearConv": _CONV + ("channels_last",), "QLinearMatMul": (),
    "QLinearAdd": (), "Conv": _CONV, "FusedConv": _CONV + ("activation", "activation_params"), "Gemm": ("alpha", "beta", "transA", "transB"),
    "FusedGemm": ("alpha", "beta", "transA", "transB", "activation"), "GlobalAveragePool": (),
    "MaxPool": ("kernel_shape", "strides", "pads", "ceil_mode", "dilations", "storage_order", "auto_pad"), "Clip": (), "Relu": (),
    "Identity": (), "Flatten": ("axis",), "Pad": ("mode",), "Slice": (), "Add": (),
}


def check_attributes(node) -> dict:
    """``node``'s attributes, or a NotImplementedError naming those no operator here models."""
    at = node_attributes(node)
    unsupported = sorted(k for k in at if k not in _KNOWN_ATTRS.get(node.op_type, ()))
    if unsupported:
        raise NotImplementedError(f"the reference does not model {node.op_type}'s attributes {unsupported} (node {node.name})")
    return at


def _check_auto_pad(node, at: dict) -> None:
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError(f"{node.op_type} with auto_pad (node {node.name})")


def _activation(out: Out, at: dict, node) -> Out:
    """A fused activation (FusedConv, FusedGemm): only ReLU is modelled (1-Lipschitz: the bound holds)."""
    act = at.get("activation")
    if act is None:
        return out
    if act not in (b"Relu", "Relu"):
        raise NotImplementedError(f"{node.op_type} with activation {act!r} (node {node.name})")
    return Out(np.maximum(out.value, 0.0), bound=out.bound)


@dataclass
class NodeCheck:
    """One node's comparison: how many integers it output, how many of them the reference calls ties,
    how many differ from ONNX Runtime at a tie and elsewhere (must be 0); for a float output, the
    largest ratio of the difference to its bound (must be ≤ 1)."""

    name: str
    op: str
    count: int
    ties: int = 0
    differ_at_ties: int = 0
    differ: int = 0
    worst_ratio: float = 0.0
    int16_risk: bool = False

    @property
    def ok(self) -> bool:
        return self.differ == 0 and self.worst_ratio <= 1.0

    def __str__(self) -> str:
        what = (f"{self.differ} of {self.count} integers differ away from a tie" if self.differ else
                f"a float off by {self.worst_ratio:.3g}× its bound" if self.worst_ratio > 1 else "agrees")
        risk = " (its u8×s8 pairs may exceed int16 on CPUs without VNNI)" if self.int16_risk else ""
        return f"{self.op} {self.name}: {what}{risk}"


@dataclass
class Comparison:
    nodes: list[NodeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    @property
    def ties(self) -> int:
        return sum(n.ties for n in self.nodes)

    @property
    def differ_at_ties(self) -> int:
        return sum(n.differ_at_ties for n in self.nodes)

    def first_failure(self) -> NodeCheck | None:
        return next((n for n in self.nodes if not n.ok), None)


def check_input(model, input_name: str) -> None:
    """A ValueError unless ``model`` takes an input called ``input_name``."""
    inputs = [i.name for i in model.graph.input]
    if input_name not in inputs:
        raise ValueError(f"the model has no input {input_name!r} (its inputs: {', '.join(inputs)}); pass input_name=")


def optimized_model(path: str | Path):
    """ONNX Runtime's own optimized graph of ``path`` (its fused operators, NCHW layout)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def _all_outputs(model, dtypes: dict[str, np.dtype]):
    """``model`` with every node output exposed as a graph output (types from ``dtypes``)."""
    import copy

    from onnx import helper

    model = copy.deepcopy(model)
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have and name in dtypes:
                model.graph.output.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtypes[name]), None))
                have.add(name)
    return model


def ort_values(model, feed: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Every node output of ``model`` as ONNX Runtime computes it (its graph run as it stands)."""
    import onnxruntime as ort

    exposed = _all_outputs(model, dtypes)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the optimized graph as it stands
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(exposed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _output_dtype(node, out, inputs) -> np.dtype:
    if isinstance(out, Out):
        return np.dtype(out.value.dtype) if out.is_int else np.dtype(np.float32)
    return np.dtype(out.dtype) if out.dtype != np.float64 else np.dtype(np.float32)


def compare(path: str | Path, images: np.ndarray, input_name: str = "image") -> Comparison:
    """ONNX Runtime against the reference, node by node on ``images``: every node of ONNX Runtime's
    optimized graph of ``path`` is recomputed here from ONNX Runtime's own inputs to it."""
    from onnx import numpy_helper

    model = optimized_model(path)
    check_input(model, input_name)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feed = {input_name: np.asarray(images, np.float32)}
    # First pass: the reference on its own, for the output types (ONNX Runtime needs them to expose outputs).
    dtypes: dict[str, np.dtype] = {}
    own = dict(consts, **feed)
    for node in model.graph.node:
        inputs = [own.get(n) if n else None for n in node.input]
        out = run_node(node, inputs, consts)
        dtypes[node.output[0]] = _output_dtype(node, out, inputs)
        own[node.output[0]] = (out.value.astype(dtypes[node.output[0]]) if isinstance(out, Out) else out)
    theirs = ort_values(model, feed, dtypes)
    values = dict(consts, **feed, **theirs)
    result = Comparison()
    for node in model.graph.node:
        inputs = [values.get(n) if n else None for n in node.input]
        out = run_node(node, inputs, consts)
        got = theirs[node.output[0]]
        check = NodeCheck(node.name or node.output[0], node.op_type, int(got.size))
        if isinstance(out, Out) and out.is_int:
            check.int16_risk = out.int16_risk
            differ = got != out.value
            check.ties, check.differ_at_ties = int(out.ties.sum()), int((differ & out.ties).sum())
            check.differ = int((differ & ~out.ties).sum())
        elif isinstance(out, Out):
            gap = np.abs(_f64(got) - out.value)
            # float32's own rounding of the result: half a unit in the last place beyond the bound
            allowed = out.bound + U * np.abs(out.value) + np.finfo(np.float32).tiny
            check.worst_ratio = float((gap / allowed).max()) if gap.size else 0.0
        else:
            check.differ = int((got != out).sum())
        result.nodes.append(check)
    return result
