"""daqkd/export/reference.py: the NumPy reference of ONNX Runtime's integer operators equals ONNX
Runtime's kernels on the integers, except at the ties it counts, operator by operator on random
inputs (single-node graphs) and node by node on an exported student."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from daqkd.export import reference as ref

RNG = np.random.default_rng


def run_single(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray], out_type: int, domain: str = "", **attrs):
    """One ``op`` node in ONNX Runtime (inputs in the order of ``inputs`` then ``consts``' keys as
    named in ``order``)."""
    import onnxruntime as ort

    order = list(inputs) + list(consts)
    node = helper.make_node(op, [n if n is not None else "" for n in order], ["y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()])
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def assert_equal_but_ties(got: np.ndarray, out: ref.Out, max_tie_fraction: float = 1e-3) -> int:
    differ = got != out.value
    assert not (differ & ~out.ties).any(), f"{int((differ & ~out.ties).sum())} integers differ away from a tie"
    assert out.ties.mean() <= max_tie_fraction  # a tolerance so wide that it hides real differences would show here
    return int(out.ties.sum())


def test_round_to_is_half_to_even_and_saturates():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -3.0, 2.4999])
    out = ref.round_to(v, 0, np.uint8, np.full(v.shape, 1e-3))
    assert out.value.tolist() == [0, 2, 2, 0, 0, 255, 0, 2]
    # ties: within 1e-3 of a half integer and the two neighbours saturate differently (−0.5 → 0 either way, −1.5 too)
    assert out.ties.tolist() == [True, True, True, False, False, False, False, True]


@pytest.mark.parametrize("power_of_two", [True, False])
def test_quantize_linear_matches_onnx_runtime(power_of_two):
    rng = RNG(1)
    scale = np.float32(2.0**-5 if power_of_two else 0.0371)
    x = (rng.normal(0, 3, 20000)).astype(np.float32)
    if power_of_two:  # exact half-steps: the kernel's division is exact, so half-to-even decides them
        x[:5000] = ((rng.integers(-80, 200, 5000) + 0.5) * scale).astype(np.float32)
    zero = np.uint8(77)
    got = run_single("QuantizeLinear", {"x": x}, {"s": scale, "z": zero}, TensorProto.UINT8)
    out = ref.quantize_linear(x, scale, zero)
    if power_of_two:
        assert (got == out.value).all() and out.ties.sum() >= 4000  # every exact tie rounded to even, as the reference does
    else:
        assert_equal_but_ties(got, out)


def random_conv(rng, group):
    x = rng.integers(0, 256, (3, 8, 9, 9)).astype(np.uint8)
    w = rng.integers(-63, 64, (6, 8 // group, 3, 3)).astype(np.int8)  # pairs within int16 (int16_pairs_fit)
    ws = rng.uniform(1e-3, 2e-2, 6).astype(np.float32)
    bias = rng.integers(-20000, 20000, 6).astype(np.int32)
    return x, np.float32(0.02), np.uint8(3), w, ws, np.zeros(6, np.int8), np.float32(0.9), np.uint8(11), bias


@pytest.mark.parametrize("group,stride", [(1, 1), (2, 2)])
def test_qlinear_conv_matches_onnx_runtime(group, stride):
    rng = RNG(group + 10 * stride)
    x, xs, xz, w, ws, wz, ys, yz, bias = random_conv(rng, group)
    consts = {"xs": xs, "xz": xz, "w": w, "ws": ws, "wz": wz, "ys": ys, "yz": yz, "b": bias}
    attrs = dict(strides=[stride, stride], pads=[1, 1, 1, 1], group=group)
    got = run_single("QLinearConv", {"x": x}, consts, TensorProto.UINT8, **attrs)
    out = ref.qlinear_conv(x, xs, xz, w, ws, wz, ys, yz, bias=bias, **attrs)
    assert got.shape == out.value.shape
    assert len(np.unique(out.value)) > 20  # spread over the grid, not saturated: the test sees the arithmetic
    assert not out.int16_risk
    assert_equal_but_ties(got, out)
    # The check is sensitive: a scale off by 2 % moves many integers away from any tie.
    wrong = ref.qlinear_conv(x, xs, xz, w, ws, wz, np.float32(ys * 1.02), yz, bias=bias, **attrs)
    assert ((got != wrong.value) & ~wrong.ties).sum() > 20


def test_qlinear_conv_ties_are_real_ties():
    """Sums that land exactly on a half step (ratio 1/2, exact in float32): the reference marks every
    one a tie, and the kernel rounds them to even, as the definition says."""
    x = np.arange(1, 65, dtype=np.uint8).reshape(1, 1, 8, 8)
    w = np.ones((1, 1, 1, 1), np.int8)
    out = ref.qlinear_conv(x, np.float32(0.5), np.uint8(0), w, np.float32([1.0]), np.int8([0]), np.float32(1.0), np.uint8(0))
    got = run_single("QLinearConv", {"x": x}, {"xs": np.float32(0.5), "xz": np.uint8(0), "w": w, "ws": np.float32([1.0]),
                                               "wz": np.int8([0]), "ys": np.float32(1.0), "yz": np.uint8(0)}, TensorProto.UINT8)
    odd = x.astype(int) % 2 == 1
    assert (out.ties == odd).all()
    assert (got == out.value).all() and (got == np.rint(x / 2.0)).all()


def test_qlinear_add_matches_onnx_runtime():
    rng = RNG(3)
    a, b = (rng.integers(0, 256, (4, 16, 8, 8)).astype(np.uint8) for _ in range(2))
    # scales without decimal coincidences (0.86·25 = 21.5 would make exact ties common)
    consts = {"as": np.float32(0.0431977), "az": np.uint8(120), "b": b, "bs": np.float32(0.0170423), "bz": np.uint8(7),
              "cs": np.float32(0.0502311), "cz": np.uint8(30)}
    got = run_single("QLinearAdd", {"a": a}, consts, TensorProto.UINT8, domain="com.microsoft")
    out = ref.qlinear_add(a, consts["as"], consts["az"], b, consts["bs"], consts["bz"], consts["cs"], consts["cz"])
    assert_equal_but_ties(got, out)
    wrong = ref.qlinear_add(a, consts["as"], consts["az"], b, consts["bs"], consts["bz"], np.float32(0.0507), consts["cz"])
    assert ((got != wrong.value) & ~wrong.ties).sum() > 100


def test_qlinear_matmul_matches_onnx_runtime():
    rng = RNG(4)
    a = rng.integers(0, 256, (32, 64)).astype(np.uint8)
    b = rng.integers(-63, 64, (64, 10)).astype(np.int8)
    consts = {"as": np.float32(0.02), "az": np.uint8(128), "b": b, "bs": np.float32(0.004), "bz": np.int8(0),
              "ys": np.float32(0.3), "yz": np.uint8(128)}
    got = run_single("QLinearMatMul", {"a": a}, consts, TensorProto.UINT8)
    out = ref.qlinear_matmul(a, *consts.values())
    assert_equal_but_ties(got, out)


def test_the_int16_pair_risk_is_flagged():
    x = np.full((1, 2, 3, 3), 255, np.uint8)
    assert ref.int16_pairs_fit(x, np.full((1, 2, 1, 1), 64, np.int8)) and not ref.int16_pairs_fit(x, np.full((1, 2, 1, 1), 65, np.int8))
    out = ref.qlinear_conv(x, np.float32(1), np.uint8(0), np.full((1, 2, 1, 1), -127, np.int8), np.float32([1.0]), np.int8([0]),
                           np.float32(1000), np.uint8(128))
    assert out.int16_risk


def test_max_pool_on_integers_is_exact():
    x = RNG(5).integers(0, 256, (2, 3, 9, 9)).astype(np.uint8)
    got = run_single("MaxPool", {"x": x}, {}, TensorProto.UINT8, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    assert (got == ref.max_pool(x, [3, 3], [2, 2], [1, 1, 1, 1])).all()


def test_float_conv_is_within_its_derived_bound():
    rng = RNG(6)
    x = rng.normal(0, 1, (2, 3, 10, 10)).astype(np.float32)
    w = rng.normal(0, 1, (5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 1, 5).astype(np.float32)
    got = run_single("Conv", {"x": x}, {"w": w, "b": b}, TensorProto.FLOAT, pads=[1, 1, 1, 1])
    out = ref.conv_float(x, w, b, pads=[1, 1, 1, 1])
    gap = np.abs(got - out.value)
    assert (gap <= out.bound + ref.U * np.abs(out.value)).all()
    assert gap.max() > 0  # float32 does round: the bound is not vacuous here


def test_compare_follows_onnx_runtimes_fusions_and_refuses_what_it_does_not_model(tmp_path):
    """A float Conv → Relu → QuantizeLinear with a non-zero zero point becomes ORT's FusedConv (ReLU
    inside): compared node by node. An attribute the reference does not model is an error, never a
    silent wrong comparison."""
    import onnx

    rng = RNG(8)
    w = rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]), helper.make_node("Flatten", ["q"], ["logits"], axis=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.05), "s"),
                               numpy_helper.from_array(np.uint8(3), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    result = ref.compare(tmp_path / "m.onnx", rng.normal(0, 1, (3, 2, 6, 6)).astype(np.float32))
    assert [n.op for n in result.nodes] == ["FusedConv", "QuantizeLinear", "Flatten"] and result.ok, result.nodes
    assert result.nodes[1].count == 3 * 4 * 36
    with pytest.raises(NotImplementedError, match="auto_pad"):
        ref.run_node(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"), [np.zeros((1, 1, 4, 4))], {})
    with pytest.raises(NotImplementedError, match="attributes"):
        ref.run_node(helper.make_node("Gemm", ["a", "b"], ["y"], made_up=1), [np.zeros((2, 2)), np.zeros((2, 2))], {})
    with pytest.raises(NotImplementedError, match="activation"):
        ref.run_node(helper.make_node("FusedGemm", ["a", "b"], ["y"], activation="Tanh"), [np.zeros((2, 2)), np.zeros((2, 2))], {})


def test_qlinear_add_takes_one_element_and_absent_zero_points():
    a = np.array([[10, 20]], np.uint8)
    one = ref.qlinear_add(a, np.float32(1), np.array([2], np.uint8), a, np.float32(1), None, np.float32(2), np.array([1], np.uint8))
    assert one.value.tolist() == [[(8 + 10) // 2 + 1, (18 + 20) // 2 + 1]]


@pytest.mark.slow  # the fast_teacher fixture trains a teacher
@pytest.mark.parametrize("name,bits", [("ewgs", 4), ("ewgs", 2), ("lsq", 8)])
def test_an_exported_student_runs_the_reference_and_the_torch_replay(fast_teacher, fmnist_batch, quantizer_factories, tmp_path, name,
                                                                     bits):
    """student_int8.onnx in ONNX Runtime against (1) the reference, node by node, fed ONNX Runtime's
    own inputs to each node: every integer equal but at counted ties, every float within its bound;
    and (2) daqkd.export.replay, ONNX Runtime's optimized graph computed in torch with
    daqkd.quant.deploy, each side from its own values, image to logits: every integer equal but at
    counted ties (on another CPU the float first layer sums in another order). At 8
    bits the exporter cannot keep the u8×s8 pairs within int16 (2·255·127 > 32,767), and on a CPU
    without VNNI those layers' kernels may saturate: there (the reference's int16_risk layers), and
    only there and downstream, integers may differ."""
    from test_export import student_of

    from daqkd.export import freeze, replay
    from daqkd.export.eager import QInt
    from daqkd.export.int8 import export_int8_onnx, int8_forward

    student = student_of(fast_teacher, quantizer_factories[name], bits, fmnist_batch[0])
    frozen, _ = freeze(student)
    written = export_int8_onnx(frozen, fmnist_batch[0], tmp_path / "int8.onnx")
    images = fmnist_batch[0][:16]
    result = ref.compare(tmp_path / "int8.onnx", images.numpy())
    assert {"QLinearConv", "QLinearAdd", "QuantizeLinear"} <= {n.op for n in result.nodes}
    risky = [n for n in result.nodes if n.int16_risk]
    assert bool(risky) == (bits == 8)
    assert all(n.ok or n.int16_risk for n in result.nodes), result.first_failure()
    integers = sum(n.count for n in result.nodes if n.op.startswith("QLinear"))
    assert result.ties <= 1e-3 * integers
    assert sum(n.differ for n in risky) <= 1e-3 * sum(n.count for n in risky)  # saturation is rare; a wiring bug is not
    check = replay.compare(tmp_path / "int8.onnx", images)  # the same images: int16_risk depends on the integers met
    assert check.integers > 250_000 and check.ties <= 1e-3 * check.integers
    assert check.differ == 0 or (bits == 8 and check.first.split()[-1] in {n.name for n in risky}), check
    # (3) the exporter's own walk computed in torch (daqkd.export.eager, what deploy=int8 trains through)
    # equals the replay of ONNX Runtime's optimized graph: both are torch on this CPU, so bit for bit.
    logits, graph = int8_forward(frozen, images, ranges=written["ranges"])
    mine = replay.replay(ref.optimized_model(tmp_path / "int8.onnx"), images)
    shared = [n for n, v in graph.values.items() if isinstance(v, QInt) and n in mine]
    assert sum(graph.values[n].q.numel() for n in shared) > 0.95 * check.integers
    assert all(torch.equal(graph.values[n].q, mine[n]) for n in shared), [n for n in shared if not torch.equal(graph.values[n].q, mine[n])]
    assert torch.equal(logits, mine["logits"])
def test_compare_names_a_wrong_input_and_an_empty_comparison(tmp_path):
    import onnx

    from daqkd.export import replay

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    images = np.zeros((1, 2), np.float32)
    for compare in (ref.compare, replay.compare):
        with pytest.raises(ValueError, match="has no input 'image' \\(its inputs: x\\)"):
            compare(tmp_path / "m.onnx", images)
    with pytest.raises(ValueError, match="nothing to compare"):
        replay.compare(tmp_path / "m.onnx", images, input_name="x")


@pytest.mark.parametrize("x,nudge,ties,differ", [(2.5, 0, 0, 0), (2.5, "ulp", 1, 0), (2.5, 0.6, 0, 1), (2.1, "q+1", 0, 1)])
def test_the_replay_counts_a_float_tie_and_nothing_else(tmp_path, monkeypatch, x, nudge, ties, differ):
    """A float convolution whose output lies on a rounding boundary (2.5, scale 1) and a QuantizeLinear:
    the replay's float nudged by one unit in the last place (as another CPU's summation order may do)
    rounds the other way, a tie within the derived bound, counted and taken from ONNX Runtime; nudged by
    0.6 it is a real difference; and a QuantizeLinear one step off from equal inputs away from any
    boundary (2.1) is a difference, not a tie."""
    import onnx

    from daqkd.export import replay

    nodes = [helper.make_node("Conv", ["image", "w"], ["y"], name="conv"), helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"], name="q")]
    inits = [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"), numpy_helper.from_array(np.array(1.0, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    run_node = replay.run_node

    def nudged(node, inputs):
        y = run_node(node, inputs)
        if nudge == "q+1":
            return y + 1 if node.op_type == "QuantizeLinear" else y
        if node.op_type not in ("Conv", "FusedConv") or not nudge:
            return y
        return torch.nextafter(y, torch.full_like(y, 9.0)) if nudge == "ulp" else y + nudge

    monkeypatch.setattr(replay, "run_node", nudged)
    check = replay.compare(tmp_path / "m.onnx", np.full((1, 1, 1, 1), x, np.float32))
    assert (check.integers, check.ties, check.differ) == (1, ties, differ)
    assert check.first == ("QuantizeLinear q" if differ else None)
