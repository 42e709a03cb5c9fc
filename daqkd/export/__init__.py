"""Export a trained student: the frozen integer module and its ONNX forms, each checked against the
training-time model on the test set.

    python -m daqkd.export outputs/train/2026-11-22_19-24-02            # a run folder
    python -m daqkd.export path/to/checkpoints/last.ckpt --bench        # + ONNX Runtime speed and size

The conversion of a student into fixed-point layers lives beside the quantizers
(``daqkd.quant.convert``); this package holds the formats and the runtime:

- ``qdq``: ``student.onnx``, exact (QuantizeLinear / DequantizeLinear around float convolutions);
- ``int8``: ``student_int8.onnx``, laid out for ONNX Runtime's integer kernels (QLinearConv);
- ``weights``: ``student_weights.npz``, the numbers with packed sub-byte weights, and its loader;
- ``runtime``: ONNX Runtime sessions, outputs and timings;
- ``command``: the command line (``export``, ``main``).

The names below are importable from ``daqkd.export`` as before; ``student_int.pt`` files pickled
when the frozen layers lived here still load.
"""
from daqkd.errors import ExportError
from daqkd.export.command import export, load_student, locate_run, main
from daqkd.export.int8 import export_int8_onnx, fused_ops
from daqkd.export.qdq import OPSET, export_onnx
from daqkd.export.runtime import logits, onnx_bench, onnx_session, predictions
from daqkd.export.weights import load_weights_file, save_weights
from daqkd.quant.convert import FloatLayer, FrozenActivation, FrozenLayer, batchnorm_affine, container_bits, conv_bn_pairs, freeze, pack, unpack

__all__ = ["OPSET", "ExportError", "FloatLayer", "FrozenActivation", "FrozenLayer", "batchnorm_affine", "container_bits",
           "conv_bn_pairs", "export", "export_int8_onnx", "export_onnx", "freeze", "fused_ops", "load_student",
           "load_weights_file", "locate_run", "logits", "main", "onnx_bench", "onnx_session", "pack", "predictions",
           "save_weights", "unpack", "dequantize_weight", "quantize_act", "split_zero", "unsigned"]
