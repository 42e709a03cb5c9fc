"""``student.onnx``: the frozen student written exactly, as QuantizeLinear / DequantizeLinear around
float convolutions (ONNX Runtime computes it in float; ``daqkd.export.int8`` writes the form its
integer kernels run).

A fractional zero point (a learned lower clip, the mid-rise weight grid (2k − L)/L of EWGS, PACT and
DoReFa) is split into an integer part and an exact Add/Sub of the remainder. Below 8 bits the
integers sit in 8-bit containers, clipped to the b-bit range with a Clip on the values just before
QuantizeLinear: ONNX has no sub-byte types, so the file is no smaller than at 8 bits and ONNX Runtime
computes in 8 bits (README, "Exporting a student").
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

OPSET = 18  # the first the dynamo exporter writes


def _translations() -> dict:
    """ONNX for daqkd's two custom ops (``daqkd.quant.convert``), for the dynamo exporter: each op's
    scalars are Python numbers at export time, so every constant is written as it is."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    def f32(v):
        return op.Constant(value=ir.tensor(float(v), dtype=ir.DataType.FLOAT))

    def quantize_act(x, s_in: float, zi_in: int, r_in: float, qmin: int, qmax: int, s_out: float, zi_out: int, r_out: float):
        if r_in != 0:
            x = op.Add(x, f32(s_in * r_in))
        # The b-bit range as a Clip on the input's float values (ONNX Runtime's QDQ optimizers do not
        # keep a Clip on the integers: with one, the optimized graph disagreed with the unoptimized one).
        x = op.Clip(x, f32(s_in * (qmin - zi_in)), f32(s_in * (qmax - zi_in)))
        k = op.QuantizeLinear(x, f32(s_in), op.Constant(value=ir.tensor(zi_in, dtype=ir.DataType.UINT8)))
        y = op.DequantizeLinear(k, f32(s_out), op.Constant(value=ir.tensor(zi_out, dtype=ir.DataType.UINT8)))
        return op.Sub(y, f32(s_out * r_out)) if r_out != 0 else y

    def dequantize_weight(k, scale, zi, correction):
        w = op.DequantizeLinear(k, scale, zi, axis=0)
        empty = correction.shape is not None and len(correction.shape) > 0 and correction.shape[0] == 0
        return w if empty else op.Sub(w, correction)

    return {torch.ops.daqkd.quantize_act.default: quantize_act, torch.ops.daqkd.dequantize_weight.default: dequantize_weight}


def export_onnx(model: nn.Module, path: str | Path, image_shape: tuple[int, int, int]) -> Path:
    """``model`` as ONNX (opset 18, dynamic batch) through ``torch.onnx.export(dynamo=True)``, checked
    with onnx.checker and written atomically."""
    import contextlib
    import io
    import warnings

    import onnx

    import daqkd.quant.convert  # noqa: F401 (defines the custom ops the translations name)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model = model.eval().requires_grad_(False)
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]  # a line per folded constant at INFO
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.zeros(2, *image_shape),), dynamo=True, opset_version=OPSET,
                                    input_names=["image"], output_names=["logits"], dynamic_shapes=({0: batch},),
                                    custom_translation_table=_translations(), optimize=True, verbose=False)
    for q, level in zip(quiet, levels):
        q.setLevel(level)
    try:
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        strip_metadata(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def strip_metadata(proto) -> None:
    """Drop what the dynamo exporter records for debugging on every node (the source file paths and
    stack trace, the fx node, the module hierarchy): a third of a small model's file, and the
    exporting machine's paths, which a shipped file should not carry."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        del graph.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attribute in node.attribute:  # the bodies of If and Loop
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    proto.doc_string = ""
