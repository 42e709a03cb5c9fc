"""Minimal reproduction: ONNX Runtime's QDQ optimizations round a float convolution bias.

A QDQ convolution (DequantizeLinear on the input and the weights, a *float* bias, QuantizeLinear on
the output) is what ``student.onnx`` writes for a layer whose zero points are integers (LSQ); there
a ReLU and the next quantizer's range Clip sit between the conv and the QuantizeLinear. With its
graph optimizations on (the default), ONNX Runtime 1.32 replaces the float bias by
DequantizeLinear(round(bias / (x_scale·w_scale)) as int32):

- conv → QuantizeLinear: it fuses the three into a QLinearConv, whose int32 bias the operator
  defines;
- conv → Relu → Clip → QuantizeLinear (student.onnx's pattern): it keeps the conv in float
  (FusedConv) and still feeds it the rounded bias.

The graph's own semantics keep the bias exact. The difference is up to half a step x_scale·w_scale
on the conv output, which moves outputs that lie within it of a rounding boundary by one step of the
next quantizer.

    python scripts/ort_bias_rounding.py

prints the largest output difference (in units of the output grid), the share of outputs that move,
and the bias-quantization nodes ORT inserted. One convolution, one channel, no daqkd code.
"""
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

Y_SCALE = 0.0037  # not a multiple of x_scale·w_scale, so no output lies on a rounding tie


def model(bias: float, clip: bool, x_scale=0.1, w_scale=0.05, y_scale=Y_SCALE) -> onnx.ModelProto:
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    inits = [c("xs", np.float32(x_scale)), c("xz", np.uint8(0)), c("w", np.ones((1, 1, 3, 3), np.int8)),
             c("ws", np.float32(w_scale)), c("wz", np.int8(0)), c("b", np.array([bias], np.float32)),
             c("ys", np.float32(y_scale)), c("yz", np.uint8(0)), c("lo", np.float32(0)), c("hi", np.float32(200 * y_scale))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"]),
             helper.make_node("Conv", ["xf", "wf", "b"], ["y"], pads=[1, 1, 1, 1])]
    if clip:  # the ReLU and the next quantizer's range, as student.onnx writes them
        nodes += [helper.make_node("Relu", ["y"], ["yr"]), helper.make_node("Clip", ["yr", "lo", "hi"], ["yc"])]
    nodes.append(helper.make_node("QuantizeLinear", ["yc" if clip else "y", "ys", "yz"], ["yq"]))
    graph = helper.make_graph(nodes, "bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("yq", TensorProto.UINT8, [1, 1, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(path: Path, optimized: bool, x: np.ndarray, dump: Path | None = None) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no warning about saving an optimized graph
    if not optimized:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if dump is not None:
        opts.optimized_model_filepath = str(dump)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].astype(np.int32)


def main() -> None:
    # bias = 0.3 steps of x_scale·w_scale: the graph adds 0.0015; an int32 bias of round(0.3) = 0 adds nothing.
    bias = 0.3 * 0.1 * 0.05
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.6, (1, 1, 16, 16)).astype(np.float32)
    # The graph's semantics, by hand in float64: y = Σ (0.1·x_q)(0.05·1) + bias, quantized at Y_SCALE.
    xq = np.clip(np.rint(x / np.float32(0.1)), 0, 255)
    s = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    acc = sum(s[..., i:i + 16, j:j + 16] for i in range(3) for j in range(3))
    by_hand = np.clip(np.rint((acc * 0.1 * 0.05 + bias) / Y_SCALE), 0, 200).astype(np.int32)
    without = np.clip(np.rint(acc * 0.1 * 0.05 / Y_SCALE), 0, 200).astype(np.int32)
    print(f"onnxruntime {ort.__version__}: one QDQ Conv, bias = 0.3 × x_scale·w_scale")
    for clip in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "conv.onnx"
            onnx.save(model(bias, clip), str(path))
            exact, optimized = run(path, False, x), run(path, True, x, Path(tmp) / "optimized.onnx")
            nodes = [n.op_type + "(" + ", ".join(n.input) + ")" for n in onnx.load(str(Path(tmp) / "optimized.onnx")).graph.node
                     if any("bias" in i or i == "b" for i in n.input)]
        print(f"conv → {'Relu → Clip → ' if clip else ''}QuantizeLinear:")
        print(f"  optimizations off vs by hand: {int((exact != by_hand).sum())} of {exact.size} outputs differ")
        print(f"  optimizations on  vs by hand without the bias: {int((optimized != without).sum())} differ")
        print(f"  optimizations on  vs by hand: {int((optimized != by_hand).sum())} of {exact.size} outputs differ "
              f"(max {int(np.abs(optimized - by_hand).max())} step)")
        print("  nodes reading the bias after optimization:", "; ".join(nodes) or "none")


if __name__ == "__main__":
    main()
