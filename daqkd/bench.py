"""``python -m daqkd.bench [--out bench/bench.json] [--quick]``: speed figures, written as JSON.

Everything is measured in one process, one after the other, and reported as ratios against a
baseline measured in the same run, because absolute times on shared machines are noisy:

- qat_step: one QAT+KD training step of the default student (ResNet-20, EWGS W2A2, batch 128),
  the fused EWGS Function against the plain-autograd reference (clamp + EWGSRound), and FP.
- ewgs_delta: the per-epoch Hutchinson re-estimate of δ, as a multiple of one training step.
- augment: images per second of each DA's per-sample pipeline, relative to `minimal`.
- scoring: seconds to score one candidate with the metric, relative to one training step.
- ranking_stability: with the cached default teacher (if present), Spearman ρ between the DA
  ranking at each subsample size and the ranking at the largest one.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from daqkd.augment import PAPER_POOL, build_augmentation, sample_pipeline
from daqkd.kd import cross_entropy, kd_kl
from daqkd.models import create_model
from daqkd.quant import EWGSQuantizer, calibrate, estimate_ewgs_deltas, quantize_model
from daqkd.quant.ewgs import ewgs_round


class ReferenceEWGS(EWGSQuantizer):
    """EWGS through plain autograd (clamp + EWGSRound): the baseline for the fused Function."""

    def forward(self, x):
        x_q = ewgs_round(self.normalize(x), self.levels, self.delta)
        return 2 * x_q - 1 if self.is_weight else x_q


def timed(fn, repeat: int) -> float:
    """Median seconds per call, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def qat_step_figures(repeat: int) -> dict:
    torch.manual_seed(0)
    teacher = create_model("resnet20", 10, 1).eval()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def make_step(student):
        opt = torch.optim.Adam(student.parameters(), 1e-3)

        def step():
            with torch.no_grad():
                zt = teacher(x)
            z = student(x)
            loss = cross_entropy(z, y) + 2 * kd_kl(z, zt, 4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    students = {}
    for name, cls in (("fused", EWGSQuantizer), ("reference", ReferenceEWGS)):
        torch.manual_seed(0)
        factory = functools.partial(cls, delta_mode="fixed")
        s = quantize_model(copy.deepcopy(teacher).train(), factory, factory, 2, 2, "fp", True)
        calibrate(s, x)
        students[name] = s
    fp = copy.deepcopy(teacher).train()
    t = {name: timed(make_step(s), repeat) for name, s in students.items()}
    t["fp"] = timed(make_step(fp), repeat)
    batches = [(x, y)] * 3
    s = students["fused"]
    gen = torch.Generator().manual_seed(0)
    delta_s = timed(lambda: estimate_ewgs_deltas(s, lambda b: F.cross_entropy(s(b[0]), b[1]), batches, gen), max(1, repeat // 5))
    return {
        "qat_step": {
            "fused_ms": 1000 * t["fused"], "reference_ms": 1000 * t["reference"], "fp_kd_step_ms": 1000 * t["fp"],
            "speedup_fused_vs_reference": t["reference"] / t["fused"], "fused_vs_fp_ratio": t["fused"] / t["fp"],
        },
        "ewgs_delta": {"seconds": delta_s, "in_training_steps": delta_s / t["fused"], "batches": 3, "probes": 4},
        "_step_seconds": t["fused"],
    }


def augment_figures(n: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    rates = {}
    for name in PAPER_POOL:
        aug = build_augmentation(name, 10)
        tf = sample_pipeline(aug.sample, [0.286], [0.353], 28, 2, True)
        torch.manual_seed(0)
        t = time.perf_counter()
        out = torch.stack([tf(img) for img in images])
        if aug.batch is not None:
            aug.batch(out, torch.zeros(n, dtype=torch.long))
        rates[name] = n / (time.perf_counter() - t)
    return {name: {"images_per_s": r, "relative_to_minimal": r / rates["minimal"]} for name, r in rates.items()}


def scoring_and_stability(step_seconds: float, sizes: list[int]) -> dict:
    from hydra import compose, initialize_config_dir

    from daqkd import build
    from daqkd.config import config_dir
    from daqkd.metric.scoring import score_augmentations

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=."])
    dm = build.build_datamodule(cfg)
    dm.setup()
    cache = Path(cfg.paths.cache_dir) / "teachers"
    cached = sorted(cache.glob(f"{cfg.dataset.name}_{cfg.model.name}_*.pt")) if cache.is_dir() else []
    teacher = build.build_model(cfg)
    source = "random init (no cached teacher: run `make run` first for the stability figures)"
    if cached:
        from daqkd.io import load_weights

        load_weights(teacher, cached[-1])
        source = str(cached[-1])
    teacher.eval()
    rankings, per_candidate = {}, {}
    for n in sizes:
        scores = score_augmentations(teacher, dm, list(PAPER_POOL), n, 500, 0)
        rankings[n] = {s.name: s.m for s in scores}
        per_candidate[n] = statistics.mean(s.seconds for s in scores)
    from daqkd.report import spearman

    ref = rankings[max(sizes)]
    names = list(ref)
    stability = {n: spearman([rankings[n][k] for k in names], [ref[k] for k in names]) for n in sizes}
    return {
        "teacher": source,
        "scoring": {str(n): {"seconds_per_candidate": per_candidate[n], "in_training_steps": per_candidate[n] / step_seconds} for n in sizes},
        "ranking_stability_spearman_vs_largest": {str(n): rho for n, rho in stability.items()},
        "rankings": {str(n): sorted(r, key=r.get) for n, r in rankings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.bench", description="daqkd speed figures, as JSON")
    ap.add_argument("--out", default="bench/bench.json")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else 10
    sizes = [100, 200] if args.quick else [250, 500, 1000, 2000, 4000]
    torch.set_num_threads(torch.get_num_threads())
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine()}}
    result.update(qat_step_figures(repeat))
    step = result.pop("_step_seconds")
    result["augment"] = augment_figures(64 if args.quick else 2048)
    result.update(scoring_and_stability(step, sizes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
