"""``python -m daqkd.budget_grid --out DIR --minutes M [options] [-- overrides]``: the budget grid of
``experiment=budget_fashion_mnist_da`` run against a wall-clock budget, many jobs at once.

For machines lent for a few minutes (one GPU, many cores; ``make device-grid``): it trains every
seed's teacher first (one per seed and ``teacher.augment``), then runs the grid one budget at a
time, cheapest first, every (teacher DA, DA, seed) of a budget in parallel, ``--parallel`` jobs at
once, each job its own ``python -m daqkd.run`` process. Before a budget starts it predicts how long
that budget takes from the budgets already run (a per-job overhead plus a per-epoch cost, fitted to
their wall times) and starts it only if it fits in what is left, so the longest budget run is the
longest that fits. A budget that no longer fits is skipped, with a line saying so; a job still
running at the deadline is stopped (SIGTERM: it saves ``last.ckpt``).

The folders are those of the experiment's own sweep (``DIR/teacher_<DA>/e<epochs>/<DA>/seed<S>``),
so ``python -m daqkd.report DIR`` reads them, and a job whose ``results.json`` says ``ok`` is
skipped when the grid is run again. ``plan.json`` in DIR records the measured costs and decisions.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daqkd.augment.registry import PAPER_POOL
from daqkd.result import RunResult


@dataclass
class Job:
    teacher_da: str
    epochs: int
    da: str
    seed: int
    folder: Path
    started: float = 0.0
    seconds: float = 0.0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def done(self) -> bool:
        return job_ok(self.folder)


def job_ok(folder: Path) -> bool:
    """Whether ``folder/results.json`` records a finished run."""
    try:
        return RunResult.load(folder / "results.json").ok
    except (OSError, ValueError, TypeError):
        return False


def fit_costs(records: list[tuple[int, float]]) -> tuple[float, float]:
    """(overhead seconds, seconds per epoch) of one job, least squares over (epochs, wall seconds)
    of finished jobs; with a single budget the overhead is taken as half its wall time."""
    es = sorted({e for e, _ in records})
    if len(es) == 1:
        mean = sum(s for _, s in records) / len(records)
        return mean / 2, mean / (2 * es[0])
    n = len(records)
    mx = sum(e for e, _ in records) / n
    my = sum(s for _, s in records) / n
    sxx = sum((e - mx) ** 2 for e, _ in records)
    slope = max(sum((e - mx) * (s - my) for e, s in records) / sxx, 1e-3)
    return max(my - slope * mx, 0.0), slope


SAFETY = 1.2  # predicted times are multiplied by this: jobs of one budget differ (AugMix's loader is the slowest)

# Heaviest loader first, so that the slow jobs of a budget do not start last (longest job first).
COST_ORDER = ("augmix", "randaugment", "trivialaugment", "autoaugment_imagenet", "autoaugment_cifar10", "cutmix", "minimal")


def predict(n_jobs: int, epochs: int, parallel: int, overhead: float, per_epoch: float) -> float:
    """Wall seconds for ``n_jobs`` jobs of ``epochs`` epochs, ``parallel`` at a time (with SAFETY)."""
    waves = -(-n_jobs // parallel)
    return SAFETY * waves * (overhead + epochs * per_epoch)


def longest_fit(seconds: float, n_jobs: int, parallel: int, overhead: float, per_epoch: float) -> int:
    """The most epochs ``n_jobs`` jobs can train in ``seconds`` (0 if none)."""
    waves = -(-n_jobs // parallel)
    return max(int((seconds / (SAFETY * waves) - overhead) / per_epoch), 0)


def cost_rank(da: str) -> int:
    return COST_ORDER.index(da) if da in COST_ORDER else -1


class Grid:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = args.out.resolve()
        self.deadline = time.monotonic() + 60 * args.minutes
        self.log_dir = self.out / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.plan: dict = {"minutes": args.minutes, "parallel": args.parallel, "budgets": [], "teachers": []}
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def command(self, module: str, overrides: list[str], folder: Path) -> list[str]:
        return [sys.executable, "-m", module, "experiment=budget_fashion_mnist_da", "hydra.mode=RUN",
                f"hydra.run.dir={folder}", *self.args.overrides, *overrides]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save_plan(self) -> None:
        (self.out / "plan.json").write_text(json.dumps(self.plan, indent=1) + "\n")

    def run_all(self, jobs: list[Job], module: str = "daqkd.run") -> None:
        """Run ``jobs``, ``parallel`` at once, until done or the deadline (then SIGTERM)."""
        queue, running = list(jobs), []
        while queue or running:
            while queue and len(running) < self.args.parallel:
                job = queue.pop(0)
                overrides = [f"seed={job.seed}", f"teacher.augment={job.teacher_da}"]
                if module == "daqkd.run":  # ckpt_path=last: a job stopped at an earlier deadline resumes (a new one starts)
                    overrides += [f"trainer.max_epochs={job.epochs}", f"augment.name={job.da}", "ckpt_path=last"]
                with open(self.log_dir / f"{job.folder.relative_to(self.out).as_posix().replace('/', '_')}.log", "a") as log:
                    job.proc = subprocess.Popen(self.command(module, overrides, job.folder), stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)
                job.started = time.monotonic()
                running.append(job)
            time.sleep(0.5)
            for job in list(running):
                if job.proc.poll() is not None:
                    job.seconds = time.monotonic() - job.started
                    running.remove(job)
                    if job.proc.returncode != 0:
                        print(f"job {job.folder.relative_to(self.out)} exited {job.proc.returncode}", flush=True)
            if self.left() <= 0 and running:
                print(f"deadline: stopping {len(running)} running jobs (they save last.ckpt)", flush=True)
                for job in running:
                    os.killpg(job.proc.pid, signal.SIGTERM)
                for job in running:
                    try:
                        job.proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(job.proc.pid, signal.SIGKILL)
                return

    def teachers(self) -> None:
        a = self.args
        jobs = [Job(t, 0, "teacher", s, self.out / "teachers" / f"{t}_seed{s}") for t in a.teachers for s in a.seeds]
        start = time.monotonic()
        self.run_all(jobs, "daqkd.train_teacher")
        self.plan["teachers"] = {"jobs": len(jobs), "seconds": time.monotonic() - start}
        print(f"teachers: {len(jobs)} in {time.monotonic() - start:.0f} s", flush=True)

    def budgets(self) -> None:
        a = self.args
        records: list[tuple[int, float]] = []
        last = 0
        for planned in a.epochs:
            epochs = planned
            jobs = self.jobs(epochs)
            todo = [j for j in jobs if not j.done()]
            entry = {"epochs": epochs, "jobs": len(jobs), "to_run": len(todo)}
            if records and todo:
                overhead, per_epoch = fit_costs(records)
                need = predict(len(todo), epochs, a.parallel, overhead, per_epoch)
                entry.update(overhead_s=overhead, per_epoch_s=per_epoch, predicted_s=need, left_s=self.left())
                if need > self.left():
                    fit = longest_fit(self.left(), len(jobs), a.parallel, overhead, per_epoch)
                    if fit < 2 * max(last, 1):  # not a budget the curve lacks: stop here
                        entry["skipped"] = f"needs about {need:.0f} s, {self.left():.0f} s left; at most {fit} epochs would fit"
                        self.plan["budgets"].append(entry)
                        self.save_plan()
                        print(f"budget {epochs} epochs: {entry['skipped']}: skipped", flush=True)
                        break
                    print(f"budget {epochs} epochs needs about {need:.0f} s, {self.left():.0f} s left: running {fit} epochs instead",
                          flush=True)
                    epochs, jobs = fit, self.jobs(fit)
                    todo = [j for j in jobs if not j.done()]
                    entry.update(epochs=fit, planned_epochs=planned, jobs=len(jobs), to_run=len(todo),
                                 predicted_s=predict(len(todo), fit, a.parallel, overhead, per_epoch))
            start = time.monotonic()
            self.run_all(todo)
            finished = [j for j in todo if j.done()]
            records += [(j.epochs, j.seconds) for j in finished]
            entry.update(seconds=time.monotonic() - start, finished=len(finished) + len(jobs) - len(todo))
            self.plan["budgets"].append(entry)
            self.save_plan()
            print(f"budget {epochs} epochs: {entry['finished']} of {len(jobs)} jobs ok in {entry['seconds']:.0f} s", flush=True)
            last = epochs
            if self.left() <= 0 or epochs != planned:
                break

    def jobs(self, epochs: int) -> list[Job]:
        a = self.args
        jobs = [Job(t, epochs, da, s, self.out / f"teacher_{t}" / f"e{epochs}" / da / f"seed{s}")
                for t in a.teachers for s in a.seeds for da in a.das]
        return sorted(jobs, key=lambda j: cost_rank(j.da))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daqkd.budget_grid", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the grid's folder (a second run continues it)")
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget for teachers and grid")
    ap.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="jobs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job (OMP_NUM_THREADS)")
    ap.add_argument("--teachers", type=lambda s: s.split(","), default=["minimal"], help="teacher.augment values, comma-separated")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--epochs", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8, 32, 128, 512],
                    help="budgets, cheapest first; each runs only if it is predicted to fit")
    ap.add_argument("--das", type=lambda s: s.split(","), default=list(PAPER_POOL))
    ap.add_argument("overrides", nargs="*", help="config overrides for every job (after --)")
    args = ap.parse_args(argv)
    if args.epochs != sorted(args.epochs):
        ap.error("--epochs must be in increasing order (cheapest first)")
    grid = Grid(args)
    grid.teachers()
    grid.budgets()
    grid.plan["seconds_left"] = grid.left()
    grid.save_plan()
    return 0


if __name__ == "__main__":
    sys.exit(main())
