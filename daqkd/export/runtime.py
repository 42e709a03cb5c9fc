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
    """An ONNX Runtime CPU session. ``fused=False`` turns off ORT's QDQ optimizations, so Q/DQ run as
    written; with them on (ORT's default) it computes something else for a QDQ conv with integer zero
    points (LSQ's layers in student.onnx): it rounds the conv's float bias to int32 in units of
    x_scale·w_scale before running it, even in float (scripts/ort_bias_rounding.py reproduces it on
    one conv). A W2A2 LSQ ResNet-20 agreed on 91 % of images that way, so agreement is reported both
    ways."""
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
    """Batch-1 latency (median ms) and batch-64 throughput (64 images over the median batch time) in
    ONNX Runtime on the CPU, for one file (``compare_bench`` for several, interleaved)."""
    return compare_bench({"model": (path, fused)}, image_shape, max(2, repeats // 5))["model"]


def compare_bench(forms: dict[str, tuple[str | Path, bool]], image_shape: tuple[int, int, int], rounds: int = 5) -> dict:
    """Batch-1 latency and batch-64 throughput of several ONNX files ({name: (path, fused)}), measured
    in turns: each round times every file (5 batch-1 calls, 2 batch-64 calls), and each figure is the
    median over the rounds. A spell of load on a shared machine then falls on every file alike, so the
    ratios between them hold better than when each is timed in one block."""
    import numpy as np

    one, many = np.random.rand(1, *image_shape).astype("float32"), np.random.rand(64, *image_shape).astype("float32")
    sessions = {name: onnx_session(path, fused) for name, (path, fused) in forms.items()}
    single: dict[str, list[float]] = {name: [] for name in forms}
    batch: dict[str, list[float]] = {name: [] for name in forms}
    for session in sessions.values():  # warm-up: first-call allocations and ORT's thread pool
        for _ in range(3):
            session.run(None, {"image": one})
        session.run(None, {"image": many})
    for _ in range(rounds):
        for name, session in sessions.items():
            time.sleep(0.05)  # the previous session's idle threads stop spinning (ORT's default) before this one runs
            for _ in range(5):
                t = time.perf_counter()
                session.run(None, {"image": one})
                single[name].append(time.perf_counter() - t)
            for _ in range(2):
                t = time.perf_counter()
                session.run(None, {"image": many})
                batch[name].append(time.perf_counter() - t)
    return {name: {"latency_b1_ms": 1000 * statistics.median(single[name]), "throughput_b64_img_s": 64 / statistics.median(batch[name]),
                   "size_bytes": Path(path).stat().st_size} for name, (path, _) in forms.items()}
