"""ONNX Runtime on the CPU: sessions (with or without its QDQ fusion), outputs over a loader, and
batch-1 latency / batch-64 throughput."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from daqkd.torchutil import usable_cores


def onnx_session_threads() -> int:
    """ONNX Runtime's intra-op threads in every session here: the cores this process may use, at most 4."""
    return min(4, usable_cores())


def onnx_session(path: str | Path, fused: bool = False):
    """An ONNX Runtime CPU session. ``fused=False`` turns off ORT's QDQ fusion (integer kernels), so
    Q/DQ run as written; with it on (ORT's default), the fused kernels of onnxruntime 1.32 disagreed
    with the graph's own semantics (91 % top-1 agreement for a W2A2 LSQ ResNet-20), so agreement is
    reported both ways."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = onnx_session_threads()
    if not fused:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def logits(model_or_session, loader) -> torch.Tensor:
    """The outputs of a torch module or an ONNX Runtime session over ``loader``'s images."""
    out = []
    for x, _ in loader:
        if isinstance(model_or_session, nn.Module):
            out.append(model_or_session(x))
        else:
            out.append(torch.from_numpy(model_or_session.run(None, {"image": x.numpy()})[0]))
    return torch.cat(out)


def predictions(model_or_session, loader) -> torch.Tensor:
    return logits(model_or_session, loader).argmax(1)


def onnx_bench(path: str | Path, image_shape: tuple[int, int, int], repeats: int = 50, fused: bool = False) -> dict:
    """Batch-1 latency (median ms) and batch-64 throughput (images/s) in ONNX Runtime on the CPU."""
    import numpy as np

    session = onnx_session(path, fused)
    one, many = np.random.rand(1, *image_shape).astype("float32"), np.random.rand(64, *image_shape).astype("float32")
    for _ in range(5):
        session.run(None, {"image": one})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"image": one})
        times.append(time.perf_counter() - t)
    session.run(None, {"image": many})
    start, n = time.perf_counter(), max(3, repeats // 5)
    for _ in range(n):
        session.run(None, {"image": many})
    return {"latency_b1_ms": 1000 * statistics.median(times), "throughput_b64_img_s": 64 * n / (time.perf_counter() - start),
            "size_mb": Path(path).stat().st_size / 2**20}
