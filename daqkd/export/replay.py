"""ONNX Runtime's optimized integer graph of ``student_int8.onnx``, replayed in PyTorch with the
operators of ``daqkd.quant.deploy`` (QLinearConv, QLinearAdd, QuantizeLinear as ONNX Runtime's x86
kernels compute them, bit for bit) and plain torch for the rest (max-pooling, clipping, padding and
slicing integers, which round nothing; the float convolution, pooling and classifier, which sum in
their own order).

``replay(model, images)`` returns every node's output of a loaded, optimized graph
(``daqkd.export.reference.optimized_model(path)``). It is what a ``deploy=int8`` forward must
compute; against ONNX Runtime (``compare``) its integers are equal except at counted ties (the
full-precision first layer's output is quantized, and a value within the two float kernels'
summation error of a rounding boundary may round the other way there).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from daqkd.export import reference
from daqkd.quant import deploy


def scalar(v, default=0.0) -> float:
    """A scalar or one-element input as a float (``default`` when absent)."""
    return float(np.asarray(v).reshape(-1)[0]) if v is not None else default


def conv_kwargs(at: dict) -> dict:
    """An ONNX Conv's attributes as ``F.conv2d``'s keywords (symmetric padding only)."""
    pads = list(at.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise NotImplementedError("asymmetric conv padding")
    return {"stride": list(at.get("strides", [1, 1])), "padding": pads[:2], "dilation": list(at.get("dilations", [1, 1])),
            "groups": at.get("group", 1)}


def max_pool(t: torch.Tensor, at: dict) -> torch.Tensor:
    """ONNX MaxPool (padding with −∞) in torch."""
    pads = list(at.get("pads", [0, 0, 0, 0]))
    t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]), value=-float("inf"))
    return F.max_pool2d(t, at["kernel_shape"], at.get("strides", at["kernel_shape"]), ceil_mode=bool(at.get("ceil_mode", 0)))


def pad(t: torch.Tensor, pads, value: float) -> torch.Tensor:
    """ONNX Pad (constant, every axis: begins then ends) in torch."""
    p = [int(v) for v in pads]
    k = len(p) // 2
    return F.pad(t, [v for i in reversed(range(k)) for v in (p[i], p[i + k])], value=value)


def slice_(t: torch.Tensor, starts, ends, axes=None, steps=None) -> torch.Tensor:
    """ONNX Slice (non-negative steps) in torch."""
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * t.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st < 1:
            raise NotImplementedError("Slice with a negative step")
        index[int(a)] = slice(int(s), int(min(e, t.shape[int(a)])), int(st))
    return t[tuple(index)]


def run_node(node, x: list) -> torch.Tensor:
    """One node of ONNX Runtime's optimized graph in torch; integer tensors are held in float32."""
    op, at = node.op_type, reference.check_attributes(node)  # an attribute modelled nowhere never passes silently
    get = (lambda i: x[i] if i < len(x) else None)
    if op == "QuantizeLinear":
        return deploy.quantize_linear(get(0), scalar(get(1)), int(scalar(get(2))))
    if op == "DequantizeLinear":
        s, z = get(1), get(2)
        if s.numel() > 1 and at.get("axis", 1) != 1:
            raise NotImplementedError(f"DequantizeLinear per channel on axis {at['axis']} (node {node.name})")
        shape = (1, -1) + (1,) * (get(0).ndim - 2) if s.numel() > 1 else ()
        return (get(0) - (z.reshape(shape) if z is not None and shape else scalar(z))) * (s.reshape(shape) if shape else s.reshape(()))
    if op == "QLinearConv":
        if at.get("channels_last", 0):
            raise NotImplementedError("channels_last QLinearConv")
        w_zero = get(5)
        if w_zero is not None and bool((w_zero != 0).any()):
            raise NotImplementedError("QLinearConv with a non-zero weight zero point")
        return deploy.qlinear_conv(get(0), int(scalar(get(2))), get(1).reshape(()), get(3), get(4).reshape(-1), get(8), get(6).reshape(()),
                                   int(scalar(get(7))), **conv_kwargs(at))
    if op == "QLinearAdd":
        return deploy.qlinear_add(get(0), get(1).reshape(()), int(scalar(get(2))), get(3), get(4).reshape(()), int(scalar(get(5))),
                                  get(6).reshape(()), int(scalar(get(7))))
    if op in ("Conv", "FusedConv"):
        y = F.conv2d(get(0), get(1), get(2), **conv_kwargs(at))
        act = at.get("activation")
        if act not in (None, b"Relu", "Relu"):
            raise NotImplementedError(f"FusedConv activation {act!r}")
        return F.relu(y) if act else y
    if op in ("Gemm", "FusedGemm"):
        if at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0 or at.get("activation"):
            raise NotImplementedError("Gemm with transA, alpha, beta or an activation")
        w = get(1) if at.get("transB", 0) else get(1).t()
        return F.linear(get(0), w, get(2))
    if op == "GlobalAveragePool":
        return get(0).mean(dim=(2, 3), keepdim=True)
    if op == "MaxPool":
        return max_pool(get(0), at)
    if op == "Clip":
        return torch.clamp(get(0), scalar(get(1), -float("inf")), scalar(get(2), float("inf")))
    if op == "Relu":
        return F.relu(get(0))
    if op == "Identity":
        return get(0)
    if op == "Flatten":
        return torch.flatten(get(0), at.get("axis", 1))
    if op == "Pad":
        if get(3) is not None or at.get("mode", b"constant") not in (b"constant", "constant"):
            raise NotImplementedError("Pad other than constant over every axis")
        return pad(get(0), get(1).tolist(), scalar(get(2)))
    if op == "Slice":
        return slice_(get(0), get(1).tolist(), get(2).tolist(), get(3).tolist() if get(3) is not None else None,
                      get(4).tolist() if get(4) is not None else None)
    if op == "Add":
        return get(0) + get(1)
    raise NotImplementedError(f"replay has no {op} (node {node.name})")


_MAKES_INTEGERS = {"QuantizeLinear", "QLinearConv", "QLinearAdd"}
_KEEPS_TYPE = {"Clip", "MaxPool", "Pad", "Slice", "Identity", "Flatten", "Relu"}


def output_dtypes(model) -> dict[str, np.dtype]:
    """Each node output's type: uint8 from the integer operators and what keeps their type, float32 else.
    Refuses what the replay does not model (a signed zero point)."""
    from onnx import numpy_helper

    types = {t.name: numpy_helper.to_array(t).dtype for t in model.graph.initializer}
    out: dict[str, np.dtype] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or types.get(node.input[2]) != np.uint8):
            raise NotImplementedError(f"QuantizeLinear {node.name} without a uint8 zero point")
        if node.op_type in _MAKES_INTEGERS:
            out[node.output[0]] = np.dtype(np.uint8)
        elif node.op_type in _KEEPS_TYPE:
            out[node.output[0]] = out.get(node.input[0], np.dtype(np.float32))
        else:
            out[node.output[0]] = np.dtype(np.float32)
    return out


def replay(model, images: torch.Tensor, input_name: str = "image") -> dict[str, torch.Tensor]:
    """Every node output of ONNX Runtime's optimized graph ``model`` (``reference.optimized_model``)
    on ``images``, computed in torch."""
    from onnx import numpy_helper

    values: dict[str, torch.Tensor] = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float32)) for t in model.graph.initializer}
    values[input_name] = images.to(torch.float32)
    output_dtypes(model)  # refuses what the replay does not model
    for node in model.graph.node:
        inputs = [values.get(n) if n else None for n in node.input]
        values[node.output[0]] = run_node(node, inputs)
    return values


@dataclass
class ReplayCheck:
    """Replay against ONNX Runtime, end to end: how many integers were compared, how many differ away
    from a tie (must be 0), how many differ at a counted tie, and the first node that differs away
    from one."""

    integers: int
    differ: int
    first: str | None  # the first node whose integers differ away from a tie, and its operator
    ties: int = 0


def _float_gap(node, mine_in: list, theirs_in: list, consts: dict) -> np.ndarray | None:
    """How far apart two float32 kernels may compute ``node``'s output from the same inputs: each is
    within the reference's bound of the exact value, plus float32's rounding of its result. None when
    the inputs differ (nothing is derived then) or the reference has no bound for the operator."""
    if any((m is None) != (t is None) or (m is not None and not np.array_equal(m, t)) for m, t in zip(mine_in, theirs_in)):
        return None
    out = reference.run_node(node, theirs_in, consts)
    if not isinstance(out, reference.Out) or out.is_int:
        return None
    return 2 * (out.bound + reference.U * np.abs(out.value)) + np.finfo(np.float32).tiny


def compare(path: str | Path, images, input_name: str = "image") -> ReplayCheck:
    """The replay against ONNX Runtime on ``images`` (a tensor or an array), end to end: each side
    computes from its own values. An integer may differ, by one, only at a **tie**: where both sides
    read equal inputs and the reference (``daqkd.export.reference``) finds the value within the
    kernel's rounding of a half integer, or where a QuantizeLinear reads a float that the two sides
    computed from equal inputs, the two floats differ by no more than the two kernels' derived bounds
    (a float convolution sums in an order of its own on each CPU) and ONNX Runtime's x/s lies within
    that much of a half integer. A tie is counted, and the replay takes ONNX Runtime's integer
    there, so that what follows is compared from equal inputs; any other difference is counted in
    ``differ`` and the replay goes on from its own values. A ValueError when the graph has no integer
    node: nothing would be compared."""
    from onnx import numpy_helper

    model = reference.optimized_model(path)
    reference.check_input(model, input_name)
    images = torch.as_tensor(np.asarray(images, dtype=np.float32))
    dtypes = output_dtypes(model)
    if not any(t == np.uint8 for t in dtypes.values()):
        raise ValueError(f"{path} has no integer operators after ONNX Runtime's optimizations: there is nothing to compare")
    theirs = reference.ort_values(model, {input_name: images.numpy()}, dtypes)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    theirs.update(consts)
    theirs[input_name] = images.numpy()
    values: dict[str, torch.Tensor] = {n: torch.from_numpy(a.astype(np.float32)) for n, a in consts.items()}
    values[input_name] = images.to(torch.float32)
    gaps: dict[str, np.ndarray] = {}
    integers = differ = ties = 0
    first = None
    for node in model.graph.node:
        mine_out = run_node(node, [values.get(n) if n else None for n in node.input])
        name = node.output[0]
        mine_in = [values[n].detach().numpy() if n else None for n in node.input]
        theirs_in = [theirs[n] if n else None for n in node.input]
        if dtypes[name] != np.uint8:
            gap = _float_gap(node, mine_in, theirs_in, consts)
            if gap is not None and (np.abs(mine_out.detach().numpy().astype(np.float64) - theirs[name]) <= gap).all():
                gaps[name] = gap
            values[name] = mine_out
            continue
        mine, got = mine_out.detach().numpy(), theirs[name]
        diff = mine != got
        if diff.any():
            tie = np.zeros_like(diff)
            if all(m is None or np.array_equal(m, t) for m, t in zip(mine_in, theirs_in)):
                out = reference.run_node(node, theirs_in, consts)  # equal inputs: only the reference's ties
                if isinstance(out, reference.Out) and out.is_int:
                    tie |= out.ties
            elif node.op_type == "QuantizeLinear" and node.input[0] in gaps:
                # floats that differ within the two kernels' bounds, and ONNX Runtime's x/s within that
                # much of a half integer: the two sides rounded a value on a boundary differently
                x, scale = node.input[0], np.float64(scalar(theirs_in[1]))
                v = theirs[x].astype(np.float64) / scale
                near = np.abs(v - np.floor(v) - 0.5) <= gaps[x] / scale + 2 * reference.U * np.abs(v)
                tie |= (np.abs(mine_in[0].astype(np.float64) - theirs[x]) <= gaps[x]) & near
            tie &= diff & (np.abs(mine.astype(np.int64) - got.astype(np.int64)) == 1)
            ties += int(tie.sum())
            diff &= ~tie
            mine_out = torch.where(torch.from_numpy(tie), torch.from_numpy(got.astype(np.float32)), mine_out)
        integers += got.size
        differ += int(diff.sum())
        if diff.any() and first is None:
            first = f"{node.op_type} {node.name}"
        values[name] = mine_out
    return ReplayCheck(integers, differ, first, ties)
