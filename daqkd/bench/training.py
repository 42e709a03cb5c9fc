"""The training figures: the QAT+KD step (eager and compiled) of every quantizer and KD method
against the FP limit, the fused EWGS Function, the δ re-estimate's cost and spread, and training
beside a busy process."""
from __future__ import annotations

import copy
import functools
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from daqkd import build
from daqkd.bench.core import Setup, compose_cfg, figure, timed
from daqkd.kd import cross_entropy, kd_kl
from daqkd.quant import EWGSQuantizer, estimate_ewgs_deltas, quantize_model
from daqkd.quant.ewgs import ewgs_round
from daqkd.registry import list_kd_methods, list_quantizers
from daqkd.torchutil import eval_mode


def step_seconds(bench: Setup, overrides: list[str]) -> tuple[float, float]:
    """(QAT+KD step, FP step + teacher forward) seconds, both with the real module and optimizer."""
    cfg = compose_cfg([*bench.overrides, *overrides, "optim.scheduler=null"])
    torch.manual_seed(0)
    teacher = copy.deepcopy(bench.teacher)
    student = build.build_student(cfg, teacher, bench.dm)
    module = build.build_module(cfg, student, teacher, bench.dm)
    module.train()
    opt = module.configure_optimizers()

    def qat():
        loss, _, _ = module.compute_loss(bench.batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fp = copy.deepcopy(bench.teacher).train()
    fp_opt = torch.optim.Adam(fp.parameters(), 1e-3)
    x, y = bench.batch

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
    for _ in range(bench.repeat):
        q.append(timed(qat, 1, warmup=1 if not q else 0))
        f.append(timed(limit, 1, warmup=1 if not f else 0))
    return statistics.median(q), statistics.median(f)


@figure("qat_step", order=1,
        qat_step_ewgs_kd=("≥", 0.90),  # the QAT+KD step against one FP step plus a teacher forward
        qat_step_quantizer=("≥", 0.85), qat_step_kd_method=("≥", 0.80))
def qat_steps(bench: Setup) -> dict:
    out = {}
    main_q, main_f = step_seconds(bench, [])
    name = f"{bench.cfg.quantizer.name} W{bench.cfg.bits.w}A{bench.cfg.bits.a} kd={bench.cfg.kd.name}"
    out["configured"] = {"what": name, "qat_ms": 1000 * main_q, "limit_ms": 1000 * main_f, "efficiency": main_f / main_q}
    target = "qat_step_ewgs_kd" if bench.cfg.quantizer.name == "ewgs" and bench.cfg.kd.name == "kd" else "qat_step_quantizer"
    bench.check(f"QAT+KD step, {name}", 1000 * main_q, 1000 * main_f, main_f / main_q, target, "ms")
    bench.step_time = main_q
    if bench.quick:
        return out
    for group, options, target in (("quantizer", list_quantizers(), "qat_step_quantizer"), ("kd", list_kd_methods(), "qat_step_kd_method")):
        for option in options:
            if option == bench.cfg[group].name:
                continue
            qs, fs = step_seconds(bench, [f"{group}={option}"])
            out[f"{group}={option}"] = {"qat_ms": 1000 * qs, "limit_ms": 1000 * fs, "efficiency": fs / qs}
            bench.check(f"QAT+KD step, {group}={option}", 1000 * qs, 1000 * fs, fs / qs, target, "ms")
    return out


@figure("fused_ewgs", order=2)
def fused_ewgs(bench: Setup) -> dict:
    """The fused EWGS Function against plain autograd through clamp and EWGSRound."""

    class Reference(EWGSQuantizer):
        def forward(self, x):
            x_q = ewgs_round(self.normalize(x), self.levels, self.delta)
            return 2 * x_q - 1 if self.is_weight else x_q

    x, y = bench.batch
    times = {}
    for name, cls in (("fused", EWGSQuantizer), ("reference", Reference)):
        factory = functools.partial(cls, delta_mode="fixed")
        s = quantize_model(copy.deepcopy(bench.teacher).train(), factory, factory, 2, 2, "fp", True)
        from daqkd.quant import calibrate

        calibrate(s, x)
        opt = torch.optim.Adam(s.parameters(), 1e-3)

        def step(s=s, opt=opt):
            loss = F.cross_entropy(s(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times[name] = timed(step, bench.repeat)
    bench.row("fused EWGS step vs plain autograd", 1000 * times["fused"], 1000 * times["reference"],
             times["reference"] / times["fused"], "faster", times["reference"] > times["fused"], "ms")
    return {"fused_ms": 1000 * times["fused"], "reference_ms": 1000 * times["reference"],
            "speedup": times["reference"] / times["fused"]}


@figure("ewgs_delta", order=5, delta_share=("≤", 0.05))
def ewgs_delta(bench: Setup) -> dict:
    cb = build.instantiate(bench.cfg.quantizer.callback) if bench.cfg.quantizer.get("callback") else None
    if cb is None:
        return {}
    cfg = bench.cfg
    student = build.build_student(cfg, copy.deepcopy(bench.teacher), bench.dm)
    module = build.build_module(cfg, student, copy.deepcopy(bench.teacher), bench.dm)
    bench.dm.set_train_augment("minimal")
    repeats = 2 if bench.quick else 6
    runs, seconds = [], []
    for r in range(repeats):
        batches = bench.dm.train_batches(cb.num_batches, epoch=r)
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
    epoch_steps = len(bench.dm.train_idx) // bench.dm.batch_size
    epoch_s = epoch_steps * bench.step_time
    # The callback's schedule over the default run's epochs.
    run_epochs = int(bench.cfg.trainer.max_epochs)
    estimated = len(cb.planned(run_epochs, epoch_steps))
    share = estimated * cost / (run_epochs * epoch_s)
    bench.row("EWGS δ estimate, one, vs one epoch", cost, epoch_s, cost / epoch_s, "—", None, "s")
    bench.check("EWGS δ estimates, share of the default run", estimated * cost, run_epochs * epoch_s, share, "delta_share", "s")
    rse = statistics.median(rel) if rel else float("nan")
    bench.row(f"EWGS δ relative standard error ({cb.num_batches} batch × {cb.probes} probes)", rse, 0, rse, "—", None, "")
    return {"seconds": cost, "epoch_seconds": epoch_s, "share_of_default_run": share, "estimates_in_default_run": estimated,
            "relative_standard_error": rse, "num_batches": cb.num_batches, "probes": cb.probes}


def steps_per_second(bench: Setup, threads: int, seconds: float) -> float:
    """Training steps per second of the configured student with the real loader (the config's
    workers) and ``threads`` torch threads, over ``seconds`` after a warm-up."""
    cfg = bench.cfg
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        student = build.build_student(cfg, copy.deepcopy(bench.teacher), bench.dm)
        module = build.build_module(cfg, student, copy.deepcopy(bench.teacher), bench.dm).train()
        opt = torch.optim.Adam(module.parameters(), 1e-3)

        def batches():
            while True:
                yield from bench.dm.train_loader("minimal")

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


@figure("contention", order=7, busy_machine=("≥", 0.45))  # loaded against idle training rate: a fair share of 2 cores
def contention(bench: Setup) -> dict:
    """The default run's training rate with one other busy process on the machine against the
    same without it, with speed.threads=auto (the cores less one per loader worker), and (not in
    --quick) with every core (PyTorch's default before speed.threads) for comparison."""
    from daqkd.torchutil import usable_cores

    seconds = 0.5 if bench.quick else 12.0
    workers = bench.dm.num_workers
    auto = max(1, usable_cores() - workers)
    out = {"cores": usable_cores(), "loader_workers": workers, "auto_threads": auto}
    modes = (("auto", auto),) if bench.quick else (("auto", auto), ("every core", usable_cores()))  # quick: the target's row
    for label, threads in modes:
        idle = steps_per_second(bench, threads, seconds)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            loaded = steps_per_second(bench, threads, seconds)
        finally:
            busy.kill()
            busy.wait()
        out[label] = {"threads": threads, "idle_steps_per_s": idle, "loaded_steps_per_s": loaded, "ratio": loaded / idle}
        if label == "auto":
            bench.check(f"training with one busy process, {label} ({threads} threads, {workers} workers)", loaded, idle,
                       loaded / idle, "busy_machine", "steps/s")
        else:
            bench.row(f"training with one busy process, {label} ({threads} threads, {workers} workers)", loaded, idle,
                     loaded / idle, "—", None, "steps/s")
    return out


@figure("compiled_step", order=9, compiled_step_ewgs=("≥", 0.90), compiled_step_other=("≥", 0.85))
def compiled_steps(bench: Setup) -> dict:
    """The QAT+KD step compiled (inductor) against the compiled FP step plus teacher forward, per
    quantizer (with --quick: the configured one, with dynamo's eager backend, which only traces: a
    smoke run; tests/test_module.py checks that compiled steps compute what eager ones do)."""
    out = {}
    backend = "eager" if bench.quick else "inductor"
    for q in ([bench.cfg.quantizer.name] if bench.quick else list_quantizers()):
        cfg = compose_cfg([*bench.overrides, f"quantizer={q}", "optim.scheduler=null"])
        torch.manual_seed(0)
        teacher = copy.deepcopy(bench.teacher)
        student = build.build_student(cfg, teacher, bench.dm)
        module = build.build_module(cfg, student, teacher, bench.dm).train()
        module.student.compile(backend=backend)
        module.teacher.compile(backend=backend)
        opt = module.configure_optimizers()

        def qat(module=module, opt=opt):
            loss, _, _ = module.compute_loss(bench.batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fp = copy.deepcopy(bench.teacher).train()
        fp.compile(backend=backend)
        t_eval = copy.deepcopy(bench.teacher).eval()
        t_eval.compile(backend=backend)
        fp_opt = torch.optim.Adam(fp.parameters(), 1e-3)

        def limit(fp=fp, t_eval=t_eval, fp_opt=fp_opt, x=bench.batch[0], y=bench.batch[1]):
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
        q_s, f_s = timed(qat, bench.repeat, warmup=1), timed(limit, bench.repeat, warmup=1)
        target = "compiled_step_ewgs" if q == "ewgs" else "compiled_step_other"
        out[q] = {"qat_ms": 1000 * q_s, "limit_ms": 1000 * f_s, "efficiency": f_s / q_s, "compile_s": compile_s, "backend": backend}
        bench.check(f"compiled QAT+KD step, quantizer={q}", 1000 * q_s, 1000 * f_s, f_s / q_s, target, "ms")
    return out


