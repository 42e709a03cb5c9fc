"""``python -m daqkd.bench [--quick] [--out bench/bench.json] [model=... quantizer=... bits=... kd=...]``:
how close each stage of a run comes to what the hardware allows.

Every figure is measured against a limit measured in the same process, one after the other, and
reported as a ratio, because absolute times on shared machines are noisy (targets: issue "Speed"):

- qat_step: the QAT+KD training step of the configured student (the real module, optimizer and
  batch) against its limit, one FP step of the same network plus one teacher forward; then every
  quantizer and every KD method the same way, and the fused EWGS Function against plain autograd.
- scoring: the DA scorer's images per second, augmentation included, against the rate of the
  networks it runs (teacher and student, eval forward) on the same images; per candidate and for the
  whole pool, and the pool's cost as a share of the default run.
- ewgs_delta: one δ re-estimate as a share of a training epoch, its share of the default run under
  the callback's time budget, and the estimate's relative standard error (spread over repeats).
- pipeline: images per second the training loader delivers for each DA (default worker count),
  against the QAT step's images per second.
- memory: peak RSS of this process (and of the default run, from its results.json when given).

The package: ``core`` (the setup, the ``figure`` decorator with each figure's targets, the table),
``training`` and ``scoring`` (the figures), ``command`` (this command).
"""
from daqkd.bench.command import figures, main
from daqkd.bench.core import TARGETS

__all__ = ["TARGETS", "figures", "main"]
