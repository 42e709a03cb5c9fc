"""``python -m daqkd.bench_device [--out bench/device.json] [--seconds S] [--quick]``: the speed of
the accelerator path, where a run's time goes on a GPU machine (issue "Speed", the GPU table).

- step: the QAT+KD training step (the real module, objective and optimizer; W2A2 EWGS + KD,
  ResNet-20) in images per second at batch 256, in fp32 and in bf16-mixed with channels_last, on
  28×28×1 (Fashion-MNIST) and 32×32×3 (CIFAR-sized) inputs already on the device: the GPU's rate.
- loader: images per second the training loader delivers for every DA of the paper pool with
  ``--loader-workers`` workers (default: every core but one) at batch 256: the CPU's rate.
- train: the two together, real loader and real step, for ``--seconds``: images per second and the
  GPU's utilisation over that time (NVML, sampled every 0.1 s).
- shared: k = 1, 2, 4, 8 such training processes at once on the one GPU, each with its share of the
  cores as loader workers: the aggregate images per second (what a sweep gets).

Without a GPU it runs the same code on the CPU (the tests do, at ``--quick`` size). Writes JSON and
prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from daqkd import build
from daqkd.augment.registry import PAPER_POOL
from daqkd.bench.core import compose_cfg
from daqkd.quant import calibrate


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_module(overrides: list[str], x: torch.Tensor, channels_last: bool):
    """The run's QATKDModule (random teacher weights: speed does not depend on them), calibrated on ``x``."""
    cfg = compose_cfg([*overrides, "optim.scheduler=null", f"speed.channels_last={str(channels_last).lower()}"])
    torch.manual_seed(0)
    teacher = build.build_model(cfg).eval()
    student = build.build_student(cfg, teacher, None)
    calibrate(student, x.cpu())
    module = build.build_module(cfg, student, teacher, None).to(x.device)
    module.train()
    return cfg, module, module.configure_optimizers()


def step_rate(overrides: list[str], shape: tuple[int, int, int], classes: int, batch: int, bf16: bool, channels_last: bool,
              seconds: float) -> float:
    """Images per second of the QAT+KD step on batches already on the device."""
    dev = device()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(dev)
    y = torch.randint(0, classes, (batch,), generator=gen).to(dev)
    _, module, opt = make_module(overrides, x, channels_last)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = module.compute_loss((x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        step()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - start)


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def loader_rates(overrides: list[str], workers: int, batches: int) -> dict[str, float]:
    cfg = compose_cfg([*overrides, f"dataset.datamodule.num_workers={workers}", "dataset.datamodule.batch_size=256"])
    dm = build.build_datamodule(cfg)
    dm.setup()
    out = {}
    for name in PAPER_POOL:
        it = endless(dm.train_loader(name))
        for _ in range(2 * max(workers, 1)):  # every worker started, queues filled
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        out[name] = batches * 256 / (time.perf_counter() - start)
        del it
    return out


class Utilisation:
    """Samples the GPU's utilisation (NVML through torch.cuda.utilization) in a thread."""

    def __init__(self, every: float = 0.1):
        self.every, self.samples, self.stop = every, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # no NVML (or no GPU): no figure
                return
            time.sleep(self.every)

    def __enter__(self):
        if torch.cuda.is_available():
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        return False

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def train_rate(overrides: list[str], workers: int, seconds: float, bf16: bool, channels_last: bool, augment: str = "minimal",
               start_at: float | None = None) -> dict:
    """Real loader + real QAT+KD step for ``seconds`` after a warm-up (and, with ``start_at``, not
    before that wall-clock time, so that processes measure together): images per second and GPU use."""
    cfg = compose_cfg([*overrides, f"dataset.datamodule.num_workers={workers}"])
    dm = build.build_datamodule(cfg)
    dm.setup()
    dev = device()
    x0 = dm.calibration_batch(cfg.quantizer.calibration_size).to(dev)
    _, module, opt = make_module(overrides, x0, channels_last)
    it = endless(dm.train_loader(augment))

    def step():
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = module.compute_loss((x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(x)

    for _ in range(5):
        step()
    sync()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    window = time.time()
    n, start = 0, time.perf_counter()
    with Utilisation() as util:
        while time.perf_counter() - start < seconds:
            n += step()
        sync()
    elapsed = time.perf_counter() - start
    return {"images_per_s": n / elapsed, "gpu_utilisation_percent": util.mean, "workers": workers, "augment": augment,
            "batch_size": dm.batch_size, "bf16": bf16, "channels_last": channels_last, "window": [window, time.time()]}


def shared_rates(overrides: list[str], jobs: list[int], seconds: float, cores: int) -> dict[int, dict]:
    """k training processes at once (``--worker`` mode of this module): aggregate images per second."""
    out = {}
    for k in jobs:
        workers = max(1, (cores - k) // k)
        start_at = time.time() + 15  # every process started and warmed up by then
        cmd = [sys.executable, "-m", "daqkd.bench_device", "--worker", "--seconds", str(seconds), "--loader-workers", str(workers),
               "--start-at", str(start_at), "--", *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True) for _ in range(k)]
        rates, windows = [], []
        for p in procs:
            try:
                stdout, _ = p.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            if p.returncode == 0 and lines:
                r = json.loads(lines[-1])
                rates.append(r["images_per_s"])
                windows.append(r["window"])
        late = max((w[0] for w in windows), default=start_at) - start_at  # a process still warming up at start_at
        out[k] = {"jobs": k, "loader_workers_each": workers, "finished": len(rates), "images_per_s_each": rates,
                  "aggregate_images_per_s": sum(rates), "latest_start_after_start_at_s": late}
        print(f"shared GPU, {k} jobs: {sum(rates):.0f} img/s together", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.bench_device", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/device.json")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per figure (after warm-up)")
    ap.add_argument("--loader-workers", type=int, default=None, help="default: every core but one")
    ap.add_argument("--jobs", default="1,2,4,8", help="process counts of the shared-GPU figure")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the tests' smoke run")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process of the shared figure
    ap.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides (after --), e.g. dataset.datamodule.train_subset=5000")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    workers = args.loader_workers if args.loader_workers is not None else max(1, cores - 1)
    if args.worker:  # as a sweep's job trains: fp32, the configured batch size
        print(json.dumps(train_rate(args.overrides, workers, args.seconds, bf16=False, channels_last=False, start_at=args.start_at)),
              flush=True)
        return 0
    torch.backends.cudnn.benchmark = True
    result: dict = {"machine": {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
                                "cores": cores, "torch": torch.__version__, "python": platform.python_version()},
                    "seconds_per_figure": args.seconds}
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every section, so a run stopped midway keeps what it measured
        result["seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(result, indent=2) + "\n")

    batch = 16 if args.quick else 256
    steps = {}
    for label, shape, ds in (("28x28x1", (1, 28, 28), "fashion_mnist"), ("32x32x3", (3, 32, 32), "cifar10")):
        for mode, bf16, cl in (("fp32", False, False), ("bf16+channels_last", True, True)):
            rate = step_rate([f"dataset={ds}"], shape, 10, batch, bf16, cl, args.seconds)
            steps[f"{label} {mode}"] = rate
            print(f"QAT+KD step, {label}, {mode}, batch {batch}: {rate:.0f} img/s", flush=True)
    result["step_images_per_s"] = steps
    save()
    result["loader_images_per_s"] = loader_rates(["dataset.datamodule.train_subset=null", *args.overrides], workers, 2 if args.quick else 20)
    for name, rate in result["loader_images_per_s"].items():
        print(f"loader, {name}, {workers} workers, batch 256: {rate:.0f} img/s", flush=True)
    save()
    result["train"] = train_rate(["dataset.datamodule.train_subset=null", f"dataset.datamodule.batch_size={batch}", *args.overrides],
                                 workers, args.seconds, bf16=True, channels_last=True)
    print(f"loader + step, minimal, batch 256: {result['train']['images_per_s']:.0f} img/s, "
          f"GPU busy {result['train']['gpu_utilisation_percent']}%", flush=True)
    save()
    jobs = [int(k) for k in args.jobs.split(",") if k]
    result["shared"] = shared_rates(args.overrides, jobs, args.seconds, cores)
    save()
    print(f"{result['seconds']:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
