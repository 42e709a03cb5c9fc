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
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from daqkd import build
from daqkd.config import compose_config
from daqkd.kd import cross_entropy, kd_kl
from daqkd.metric.core import bootstrap_metric
from daqkd.metric.scoring import BOOTSTRAP, score_augmentations
from daqkd.provenance import peak_rss_mb
from daqkd.quant import EWGSQuantizer, estimate_ewgs_deltas, quantize_model
from daqkd.quant.ewgs import ewgs_round
from daqkd.registry import list_kd_methods, list_quantizers
from daqkd.torchutil import eval_mode

# Every target the benchmark checks, in one place: name -> (the ratio must be at least / at most, the bound).
TARGETS: dict[str, tuple[str, float]] = {
    "qat_step_ewgs_kd": ("≥", 0.90),  # the QAT+KD step against one FP step plus a teacher forward
    "qat_step_quantizer": ("≥", 0.85),
    "qat_step_kd_method": ("≥", 0.80),
    "compiled_step_ewgs": ("≥", 0.90),
    "compiled_step_other": ("≥", 0.85),
    "scoring_efficiency": ("≥", 0.80),  # scoring against the networks' own forward rate
    "scoring_share": ("≤", 0.05),  # of the default run
    "score_command_s": ("≤", 60.0),
    "delta_share": ("≤", 0.05),
    "pipeline_vs_step": ("≥", 2.0),
    "rounds_share_of_fit": ("≤", 0.10),
    "busy_machine": ("≥", 0.45),  # loaded against idle training rate: a fair share of 2 cores
    "peak_rss_mb": ("≤", 3000.0),
}


def meets(target: str, ratio: float) -> tuple[str, bool]:
    """(the target as printed, whether ``ratio`` meets it)."""
    op, bound = TARGETS[target]
    label = f"{op} {bound:.0%}" if bound <= 1 else f"{op} {bound:g}"
    return label, (ratio >= bound) if op == "≥" else (ratio <= bound)


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compose_cfg(overrides: list[str]):
    return compose_config(["paths.output_dir=.", *overrides])


class Bench:
    def __init__(self, overrides: list[str], quick: bool):
        self.overrides, self.quick = overrides, quick
        self.repeat = 1 if quick else 8
        self.cfg = compose_cfg(overrides)
        self.dm = build.build_datamodule(self.cfg)
        self.dm.setup()
        self.teacher, self.teacher_source = self.load_teacher()
        self.batch = next(iter(self.dm.train_loader("minimal")))
        self.rows: list[dict] = []

    def load_teacher(self):
        """This config's cached teacher when there is one (trained figures), else a random one."""
        from daqkd.io import load_weights

        model = build.build_model(self.cfg)
        path = build.teacher_cache_path(self.cfg, self.dm)
        if path.is_file():
            load_weights(model, path)
            return model.eval(), str(path)
        return model.eval(), "random init (no cached teacher: run `make run` first for trained figures)"

    def row(self, figure: str, value: float, limit: float, ratio: float, target: str, met: bool | None, unit: str = ""):
        self.rows.append({"figure": figure, "value": value, "limit": limit, "ratio": ratio, "target": target, "met": met, "unit": unit})

    def check(self, figure: str, value: float, limit: float, ratio: float, target: str, unit: str = "", compared: float | None = None):
        """A row checked against TARGETS[target] (``compared``: the number compared, default ``ratio``)."""
        label, met = meets(target, ratio if compared is None else compared)
        self.row(figure, value, limit, ratio, label, met, unit)

    # ----------------------------------------------------------------------- the training step

    def step_seconds(self, overrides: list[str]) -> tuple[float, float]:
        """(QAT+KD step, FP step + teacher forward) seconds, both with the real module and optimizer."""
        cfg = compose_cfg([*self.overrides, *overrides, "optim.scheduler=null"])
        torch.manual_seed(0)
        teacher = copy.deepcopy(self.teacher)
        student = build.build_student(cfg, teacher, self.dm)
        module = build.build_module(cfg, student, teacher, self.dm)
        module.train()
        opt = module.configure_optimizers()

        def qat():
            loss, _, _ = module.compute_loss(self.batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fp = copy.deepcopy(self.teacher).train()
        fp_opt = torch.optim.Adam(fp.parameters(), 1e-3)
        x, y = self.batch

        def limit():
            with torch.inference_mode():
                zt = teacher(x)
            z = fp(x)
            loss = cross_entropy(z, y) + kd_kl(z, zt, 4.0)
            fp_opt.zero_grad(set_to_none=True)
            loss.backward()
            fp_opt.step()

        # Interleaved, so that a slow spell of the machine hits both.
        q, f = [], []
        for _ in range(self.repeat):
            q.append(timed(qat, 1, warmup=1 if not q else 0))
            f.append(timed(limit, 1, warmup=1 if not f else 0))
        return statistics.median(q), statistics.median(f)

    def qat_steps(self) -> dict:
        out = {}
        main_q, main_f = self.step_seconds([])
        name = f"{self.cfg.quantizer.name} W{self.cfg.bits.w}A{self.cfg.bits.a} kd={self.cfg.kd.name}"
        out["configured"] = {"what": name, "qat_ms": 1000 * main_q, "limit_ms": 1000 * main_f, "efficiency": main_f / main_q}
        target = "qat_step_ewgs_kd" if self.cfg.quantizer.name == "ewgs" and self.cfg.kd.name == "kd" else "qat_step_quantizer"
        self.check(f"QAT+KD step, {name}", 1000 * main_q, 1000 * main_f, main_f / main_q, target, "ms")
        self.step_time = main_q
        if self.quick:
            return out
        for group, options, target in (("quantizer", list_quantizers(), "qat_step_quantizer"), ("kd", list_kd_methods(), "qat_step_kd_method")):
            for option in options:
                if option == self.cfg[group].name:
                    continue
                qs, fs = self.step_seconds([f"{group}={option}"])
                out[f"{group}={option}"] = {"qat_ms": 1000 * qs, "limit_ms": 1000 * fs, "efficiency": fs / qs}
                self.check(f"QAT+KD step, {group}={option}", 1000 * qs, 1000 * fs, fs / qs, target, "ms")
        return out

    def fused_ewgs(self) -> dict:
        """The fused EWGS Function against plain autograd through clamp and EWGSRound."""

        class Reference(EWGSQuantizer):
            def forward(self, x):
                x_q = ewgs_round(self.normalize(x), self.levels, self.delta)
                return 2 * x_q - 1 if self.is_weight else x_q

        x, y = self.batch
        times = {}
        for name, cls in (("fused", EWGSQuantizer), ("reference", Reference)):
            factory = functools.partial(cls, delta_mode="fixed")
            s = quantize_model(copy.deepcopy(self.teacher).train(), factory, factory, 2, 2, "fp", True)
            from daqkd.quant import calibrate

            calibrate(s, x)
            opt = torch.optim.Adam(s.parameters(), 1e-3)

            def step(s=s, opt=opt):
                loss = F.cross_entropy(s(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            times[name] = timed(step, self.repeat)
        self.row("fused EWGS step vs plain autograd", 1000 * times["fused"], 1000 * times["reference"],
                 times["reference"] / times["fused"], "faster", times["reference"] > times["fused"], "ms")
        return {"fused_ms": 1000 * times["fused"], "reference_ms": 1000 * times["reference"],
                "speedup": times["reference"] / times["fused"]}

    # ----------------------------------------------------------------------- scoring

    def scoring(self) -> dict:
        m = self.cfg.metric
        n = 200 if self.quick else m.num_samples
        pool = list(self.cfg.augment.pool)[: 2 if self.quick else None]
        student = build.build_student(self.cfg, copy.deepcopy(self.teacher), self.dm)
        networks = [self.teacher, student]
        # The limit: both networks' eval forward on ready tensors of the same images.
        images = next(iter(self.dm.augment_loader("minimal", n, n, m.seed)))[0]

        def forwards():
            with eval_mode(*networks), torch.no_grad():
                for chunk in images.split(m.batch_size):
                    for net in networks:
                        F.softmax(net(chunk), 1)

        forward_s = timed(forwards, 1 if self.quick else 3)
        start = time.perf_counter()
        scores = score_augmentations(self.teacher, self.dm, pool, n, m.batch_size, m.seed, "cpu", student)
        pool_s = time.perf_counter() - start
        per = {}
        for s in scores:
            limit_s = 2 * forward_s  # two passes
            per[s.name] = {"seconds": s.seconds, "images_per_s": 2 * n / s.seconds, "limit_images_per_s": 2 * n / limit_s,
                           "efficiency": limit_s / s.seconds}
        pool_limit = 2 * forward_s * len(pool)
        self.check(f"DA scoring, pool of {len(pool)} at {n} images", pool_s, pool_limit, pool_limit / pool_s, "scoring_efficiency", "s")
        for name, d in per.items():
            self.check(f"DA scoring, {name}", d["images_per_s"], d["limit_images_per_s"], d["efficiency"], "scoring_efficiency", "img/s")
        # The default run: 2 epochs of the 15k subset, the teacher from the cache.
        steps = 2 * (len(self.dm.train_idx) // self.dm.batch_size)
        run_s = pool_s + steps * self.step_time
        share = pool_s / run_s
        self.check("DA scoring, share of the default run (estimated)", pool_s, run_s, share, "scoring_share", "s")
        if not self.quick:
            self.check("python -m daqkd.score, 7 DAs at 2000 images (the scoring part)", pool_s, 60.0, pool_s / 60.0, "score_command_s", "s",
                       compared=pool_s)
        return {"images": n, "pool": pool, "pool_seconds": pool_s, "pool_limit_seconds": pool_limit, "per_candidate": per,
                "share_of_default_run": share, "default_run_seconds_estimated": run_s,
                "ranking": [s.name for s in sorted(scores, key=lambda s: s.m)]}

    def bootstrap(self) -> dict:
        """The scorer's bootstrap standard errors at many classes (Tiny-ImageNet: 200): hard labels go
        class by class; the general path (soft labels, CutMix) is the limit it is compared with."""
        n, c = (400, 200) if self.quick else (2000, 200)
        gen = torch.Generator().manual_seed(0)
        p1, p2 = (F.softmax(3 * torch.randn(n, c, generator=gen), 1) for _ in range(2))
        hard = F.one_hot(torch.arange(n) % c, c).double()
        soft = 0.999 * hard + 0.001 / c  # the same shapes, not one-hot
        weights = torch.ones(BOOTSTRAP, n, dtype=torch.float64)
        times = {name: timed(lambda t=t: bootstrap_metric(p1, t, p2, t, weights), 1 if self.quick else 2)
                 for name, t in (("hard", hard), ("general", soft))}
        speedup = times["general"] / times["hard"]
        self.row(f"DA metric bootstrap, {c} classes × {n} images, hard labels vs general", times["hard"], times["general"],
                 speedup, "faster", speedup > 1, "s")
        return {"classes": c, "images": n, "hard_seconds": times["hard"], "general_seconds": times["general"], "speedup": speedup}

    # ----------------------------------------------------------------------- EWGS δ

    def ewgs_delta(self) -> dict:
        cb = build.instantiate(self.cfg.quantizer.callback) if self.cfg.quantizer.get("callback") else None
        if cb is None:
            return {}
        cfg = self.cfg
        student = build.build_student(cfg, copy.deepcopy(self.teacher), self.dm)
        module = build.build_module(cfg, student, copy.deepcopy(self.teacher), self.dm)
        self.dm.set_train_augment("minimal")
        repeats = 2 if self.quick else 6
        runs, seconds = [], []
        for r in range(repeats):
            batches = self.dm.train_batches(cb.num_batches, epoch=r)
            start = time.perf_counter()
            with eval_mode(module):
                runs.append(estimate_ewgs_deltas(student, lambda b: module.compute_loss(b)[0], batches,
                                                 torch.Generator().manual_seed(r), cb.probes))
            seconds.append(time.perf_counter() - start)
        rel = []
        for name in runs[0]:
            values = [run[name] for run in runs]
            mean = statistics.mean(values)
            if mean > 0:
                rel.append(statistics.stdev(values) / mean)
        cost = statistics.median(seconds)
        epoch_steps = len(self.dm.train_idx) // self.dm.batch_size
        epoch_s = epoch_steps * self.step_time
        # The callback's schedule over the default run's epochs.
        run_epochs = int(self.cfg.trainer.max_epochs)
        estimated = len(cb.planned(run_epochs, epoch_steps))
        share = estimated * cost / (run_epochs * epoch_s)
        self.row("EWGS δ estimate, one, vs one epoch", cost, epoch_s, cost / epoch_s, "—", None, "s")
        self.check("EWGS δ estimates, share of the default run", estimated * cost, run_epochs * epoch_s, share, "delta_share", "s")
        rse = statistics.median(rel) if rel else float("nan")
        self.row(f"EWGS δ relative standard error ({cb.num_batches} batch × {cb.probes} probes)", rse, 0, rse, "—", None, "")
        return {"seconds": cost, "epoch_seconds": epoch_s, "share_of_default_run": share, "estimates_in_default_run": estimated,
                "relative_standard_error": rse, "num_batches": cb.num_batches, "probes": cb.probes}

    # ----------------------------------------------------------------------- data pipeline

    def pipeline(self) -> dict:
        out = {}
        step_rate = self.dm.batch_size / self.step_time
        batches = 3 if self.quick else 20
        for name in list(self.cfg.augment.pool)[: 2 if self.quick else None]:
            loader = self.dm.train_loader(name)
            it = iter(loader)
            next(it)  # worker start-up, then steady state
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            rate = batches * self.dm.batch_size / (time.perf_counter() - start)
            del it, loader
            ratio = rate / step_rate
            out[name] = {"images_per_s": rate, "qat_step_images_per_s": step_rate, "ratio": ratio}
            exempt = name == "augmix"
            if exempt:
                self.row(f"data pipeline, {name}", rate, step_rate, ratio, "—", None, "img/s")
            else:
                self.check(f"data pipeline, {name}", rate, step_rate, ratio, "pipeline_vs_step", "img/s")
        return out

    # ----------------------------------------------------------------------- scoring that stops when decided

    def adaptive_scoring(self) -> dict:
        """augment=auto's scoring in rounds against scoring every image: the seconds (and their share
        of the default run's fit), and whether the pick is the same, for seeds 0–4 (1 with --quick), the
        paper and the reference16 pools, on Fashion-MNIST with the cached teacher, and on small
        CIFAR-format and ImageFolder sets (random images, as the tests write them) with a random teacher."""
        import tempfile

        from daqkd.metric.select import decide, pruner, rule_from_config

        m = self.cfg.metric
        rule, epochs = rule_from_config(m), self.cfg.trainer.max_epochs
        seeds = [0] if self.quick else [0, 1, 2, 3, 4]
        out: dict = {"cases": []}
        same = total = 0
        seconds = {"full": 0.0, "rounds": 0.0}
        with tempfile.TemporaryDirectory() as tmp:
            datasets = [("fashion_mnist", self.dm, self.teacher)] + ([] if self.quick else self.test_datasets(Path(tmp)))
            for data, dm, teacher in datasets:
                for pool in ("paper",) if self.quick else ("paper", "reference16"):
                    names = list(compose_cfg([*self.overrides, f"pool={pool}"]).augment.pool)
                    n = min(m.num_samples or 2000, 200 if self.quick else (500 if data != "fashion_mnist" else 2000))
                    for seed in seeds:
                        t0 = time.perf_counter()
                        full = score_augmentations(teacher, dm, names, n, m.batch_size, seed)
                        t1 = time.perf_counter()
                        rounds = score_augmentations(teacher, dm, names, n, m.batch_size, seed, chunk=m.chunk,
                                                     prune=pruner(rule, epochs, m.stop_z))
                        t2 = time.perf_counter()
                        a, b = decide(full, rule, epochs).selected, decide(rounds, rule, epochs).selected
                        same, total = same + (a == b), total + 1
                        if data == "fashion_mnist" and pool == "paper":
                            seconds["full"] += t1 - t0
                            seconds["rounds"] += t2 - t1
                        out["cases"].append({"data": data, "pool": pool, "seed": seed, "images": n, "full_pick": a, "rounds_pick": b,
                                             "full_s": t1 - t0, "rounds_s": t2 - t1,
                                             "images_used": {s.name: s.num_samples for s in rounds}})
        self.row(f"augment=auto scoring in rounds: same pick as every image ({total} cases)", same, total, same / total, "all",
                 same == total, "cases")
        k = len(seeds)
        full_s, rounds_s = seconds["full"] / k, seconds["rounds"] / k
        steps = self.cfg.trainer.max_epochs * (len(self.dm.train_idx) // self.dm.batch_size)
        fit_s = steps * self.step_time
        self.row("augment=auto scoring in rounds vs every image (Fashion-MNIST, paper pool, teacher only)", rounds_s, full_s,
                 rounds_s / full_s, "faster", rounds_s < full_s, "s")
        self.check("augment=auto scoring in rounds, share of the default run's fit (estimated)", rounds_s, fit_s, rounds_s / fit_s,
                   "rounds_share_of_fit", "s")
        out.update(same=same, total=total, full_seconds=full_s, rounds_seconds=rounds_s, fit_seconds_estimated=fit_s)
        return out

    def test_datasets(self, root: Path) -> list:
        """Small CIFAR-10-format and ImageFolder sets of random images, each with a random teacher."""
        from PIL import Image

        rng = torch.Generator().manual_seed(0)
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        import pickle

        for j, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            data = torch.randint(0, 256, (120, 3072), generator=rng, dtype=torch.uint8).numpy()
            with open(folder / name, "wb") as fh:
                pickle.dump({b"data": data, b"labels": [(j * 120 + i) % 10 for i in range(120)]}, fh)
        for c in range(4):
            for k in range(40):
                (root / "imgs" / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
                arr = torch.randint(0, 256, (24, 24, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(arr).save(root / "imgs" / "train" / f"c{c}" / f"{k}.png")
        out = []
        for data, over in (("cifar10", ["dataset=cifar10", f"paths.data_dir={root}", "dataset.datamodule.val_size=60"]),
                           ("imagefolder", ["dataset=imagefolder", "dataset.num_classes=4", "dataset.image_size=24",
                                            f"dataset.datamodule.source_options.folder={root / 'imgs'}"])):
            cfg = compose_cfg([*self.overrides, *over, "dataset.datamodule.num_workers=0", "dataset.datamodule.train_subset=null"])
            dm = build.build_datamodule(cfg)
            dm.setup()
            torch.manual_seed(0)
            out.append((data, dm, build.build_model(cfg).eval()))
        return out

    # ----------------------------------------------------------------------- compiled steps

    def compiled_steps(self) -> dict:
        """The QAT+KD step compiled (inductor) against the compiled FP step plus teacher forward, per
        quantizer (with --quick: the configured one, with dynamo's eager backend, which only traces: a
        smoke run; tests/test_module.py checks that compiled steps compute what eager ones do)."""
        out = {}
        backend = "eager" if self.quick else "inductor"
        for q in ([self.cfg.quantizer.name] if self.quick else list_quantizers()):
            cfg = compose_cfg([*self.overrides, f"quantizer={q}", "optim.scheduler=null"])
            torch.manual_seed(0)
            teacher = copy.deepcopy(self.teacher)
            student = build.build_student(cfg, teacher, self.dm)
            module = build.build_module(cfg, student, teacher, self.dm).train()
            module.student.compile(backend=backend)
            module.teacher.compile(backend=backend)
            opt = module.configure_optimizers()

            def qat(module=module, opt=opt):
                loss, _, _ = module.compute_loss(self.batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            fp = copy.deepcopy(self.teacher).train()
            fp.compile(backend=backend)
            t_eval = copy.deepcopy(self.teacher).eval()
            t_eval.compile(backend=backend)
            fp_opt = torch.optim.Adam(fp.parameters(), 1e-3)

            def limit(fp=fp, t_eval=t_eval, fp_opt=fp_opt, x=self.batch[0], y=self.batch[1]):
                with torch.inference_mode():
                    zt = t_eval(x)
                z = fp(x)
                loss = cross_entropy(z, y) + kd_kl(z, zt.clone(), 4.0)
                fp_opt.zero_grad(set_to_none=True)
                loss.backward()
                fp_opt.step()

            start = time.perf_counter()
            qat()
            limit()
            compile_s = time.perf_counter() - start
            q_s, f_s = timed(qat, self.repeat, warmup=1), timed(limit, self.repeat, warmup=1)
            target = "compiled_step_ewgs" if q == "ewgs" else "compiled_step_other"
            out[q] = {"qat_ms": 1000 * q_s, "limit_ms": 1000 * f_s, "efficiency": f_s / q_s, "compile_s": compile_s, "backend": backend}
            self.check(f"compiled QAT+KD step, quantizer={q}", 1000 * q_s, 1000 * f_s, f_s / q_s, target, "ms")
        return out

    # ----------------------------------------------------------------------- a busy machine

    def steps_per_second(self, threads: int, seconds: float) -> float:
        """Training steps per second of the configured student with the real loader (the config's
        workers) and ``threads`` torch threads, over ``seconds`` after a warm-up."""
        cfg = self.cfg
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            student = build.build_student(cfg, copy.deepcopy(self.teacher), self.dm)
            module = build.build_module(cfg, student, copy.deepcopy(self.teacher), self.dm).train()
            opt = torch.optim.Adam(module.parameters(), 1e-3)

            def batches():
                while True:
                    yield from self.dm.train_loader("minimal")

            it = batches()
            for _ in range(2):
                next(it)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                loss, _, _ = module.compute_loss(next(it))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += 1
            return n / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(before)

    def contention(self) -> dict:
        """The default run's training rate with one other busy process on the machine against the
        same without it, with speed.threads=auto (the cores less one per loader worker), and (not in
        --quick) with every core (PyTorch's default before speed.threads) for comparison."""
        from daqkd.torchutil import usable_cores

        seconds = 0.5 if self.quick else 12.0
        workers = self.dm.num_workers
        auto = max(1, usable_cores() - workers)
        out = {"cores": usable_cores(), "loader_workers": workers, "auto_threads": auto}
        modes = (("auto", auto),) if self.quick else (("auto", auto), ("every core", usable_cores()))  # quick: the target's row
        for label, threads in modes:
            idle = self.steps_per_second(threads, seconds)
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)
                loaded = self.steps_per_second(threads, seconds)
            finally:
                busy.kill()
                busy.wait()
            out[label] = {"threads": threads, "idle_steps_per_s": idle, "loaded_steps_per_s": loaded, "ratio": loaded / idle}
            if label == "auto":
                self.check(f"training with one busy process, {label} ({threads} threads, {workers} workers)", loaded, idle,
                           loaded / idle, "busy_machine", "steps/s")
            else:
                self.row(f"training with one busy process, {label} ({threads} threads, {workers} workers)", loaded, idle,
                         loaded / idle, "—", None, "steps/s")
        return out

    def table(self) -> str:
        head = f"| {'figure':<58} | {'value':>10} | {'limit':>10} | {'ratio':>7} | {'target':>7} | met |"
        lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        for r in self.rows:
            met = {True: "yes", False: "no", None: "–"}[r["met"]]
            lines.append(f"| {r['figure']:<58} | {r['value']:>10.4g} | {r['limit']:>10.4g} | {r['ratio']:>7.3f} | {r['target']:>7} | {met:>3} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.bench", description="daqkd speed figures, as ratios to limits")
    ap.add_argument("--out", default="bench/bench.json")
    ap.add_argument("--quick", action="store_true", help="few repeats, small sizes, the configured quantizer and KD only (a smoke run)")
    ap.add_argument("--run", default=None, help="a run's results.json, for the default run's peak memory and stage times")
    args, overrides = ap.parse_known_args(argv)
    start = time.perf_counter()
    bench = Bench(overrides, args.quick)
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine()},
        "overrides": overrides,
        "teacher": bench.teacher_source,
    }
    result["qat_step"] = bench.qat_steps()
    result["fused_ewgs"] = bench.fused_ewgs()
    result["scoring"] = bench.scoring()
    result["scoring"]["bootstrap"] = bench.bootstrap()
    result["ewgs_delta"] = bench.ewgs_delta()
    result["pipeline"] = bench.pipeline()
    result["contention"] = bench.contention()
    result["adaptive_scoring"] = bench.adaptive_scoring()
    result["compiled_step"] = bench.compiled_steps()
    result["memory"] = {"bench_peak_rss_mb": peak_rss_mb()}
    if args.run:
        run = json.loads(Path(args.run).read_text())
        result["memory"]["run_peak_rss_mb"] = run.get("peak_rss_mb")
        result["run_seconds"] = run.get("seconds")
        if run.get("peak_rss_mb"):
            bench.check("peak RSS of the run", run["peak_rss_mb"], 3000, run["peak_rss_mb"] / 3000, "peak_rss_mb", "MB",
                        compared=run["peak_rss_mb"])
    peak = result["memory"]["bench_peak_rss_mb"]
    bench.check("peak RSS of this bench", peak, 3000, peak / 3000, "peak_rss_mb", "MB", compared=peak)
    result["seconds"] = time.perf_counter() - start
    result["table"] = bench.rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(bench.table())
    print(f"\n{result['seconds']:.0f} s; teacher: {bench.teacher_source}; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
