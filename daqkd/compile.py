"""``speed.compile=auto``: compile the student and the teacher when the run is long enough to pay for it.

torch.compile makes the QAT+KD step faster (the EWGS kernel about 2× on a CPU) but costs tens of
seconds up front, which a short run never earns back. ``AutoCompile`` measures the eager step over
the first steps of the fit, and compiles both networks in place (``nn.Module.compile``: checkpoint
keys unchanged) when the remaining planned training time is at least ``payback`` times the compile
time. The compile time is the one measured last time for the same model, quantizer, bits, KD
method, device and torch version (kept in ``<cache_dir>/compile_seconds.json``), or ``default_s``
before any was measured; after compiling it measures the real one (the first compiled steps' extra
time) and keeps it for the next run.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch

from daqkd.io import atomic_write_json

log = logging.getLogger(__name__)


class AutoCompile(L.Callback):
    def __init__(self, key: str, cache_dir: str | Path, backend: str = "inductor", payback: float = 20.0, default_s: float = 60.0,
                 measure_steps: int = 5):
        self.key, self.path = key, Path(cache_dir).expanduser() / "compile_seconds.json"
        self.backend, self.payback, self.default_s, self.measure_steps = backend, payback, default_s, measure_steps
        self.decided = False
        self.compiled = False
        self.step_times: list[float] = []
        self.compile_started: float | None = None
        self.decision: dict = {}

    def known_seconds(self) -> float | None:
        try:
            return float(json.loads(self.path.read_text())[self.key])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._start
        if self.compiled and self.compile_started is not None:
            # The first compiled step carries the compile time; what it took beyond an eager step is the cost.
            cost = max(elapsed - self.decision["eager_step_s"], 0.0)
            self.compile_started = None
            self.decision["measured_compile_s"] = cost
            self._remember(cost)
            log.info("speed.compile=auto: compiling took %.1f s (kept in %s for the next run)", cost, self.path)
            return
        if self.decided:
            return
        self.step_times.append(elapsed)
        if len(self.step_times) < self.measure_steps + 1:  # the first step warms up
            return
        self.decided = True
        step = sorted(self.step_times[1:])[len(self.step_times[1:]) // 2]
        remaining = max(trainer.estimated_stepping_batches - trainer.global_step, 0)
        planned = remaining * step
        known = self.known_seconds()
        compile_s = known if known is not None else self.default_s
        self.decision = {"eager_step_s": step, "remaining_steps": remaining, "planned_s": planned, "compile_s": compile_s,
                         "compile_s_source": "measured before" if known is not None else "default guess", "payback": self.payback}
        if planned >= self.payback * compile_s:
            self.decision["compiled"] = True
            log.info("speed.compile=auto: %d steps left at %.3f s ≈ %.0f s ≥ %g × %.0f s of compiling (%s): compiling the student "
                     "and the teacher", remaining, step, planned, self.payback, compile_s, self.decision["compile_s_source"])
            pl_module.student.compile(backend=self.backend)
            pl_module.teacher.compile(backend=self.backend)
            self.compiled, self.compile_started = True, time.perf_counter()
        else:
            self.decision["compiled"] = False
            log.info("speed.compile=auto: %d steps left at %.3f s ≈ %.0f s < %g × %.0f s of compiling (%s): not compiling",
                     remaining, step, planned, self.payback, compile_s, self.decision["compile_s_source"])

    def _remember(self, seconds: float) -> None:
        try:
            known = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            known = {}
        known[self.key] = seconds
        try:
            atomic_write_json(self.path, known)
        except OSError as e:  # a read-only cache: the next run guesses again
            log.warning("speed.compile=auto: cannot keep the compile time in %s (%s)", self.path, e)


def compile_key(cfg, device: str) -> str:
    """What the compile time depends on: the graphs (model, quantizer, bits, KD, layout) and where they run."""
    return "|".join(map(str, (cfg.model.name, cfg.dataset.image_size, cfg.dataset.in_channels, cfg.quantizer.name, cfg.bits.w,
                              cfg.bits.a, cfg.kd.name, cfg.speed.get("channels_last", False), cfg.speed.get("compile_backend"),
                              device, torch.__version__)))
