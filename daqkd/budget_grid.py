"""``python -m daqkd.budget_grid --out DIR --minutes M [options] [-- overrides]``: a budget grid
(``--experiment``, by default ``budget_fashion_mnist_da``) run against a wall-clock budget, one
process per job, ``--parallel`` jobs at once.

It trains every seed's teacher first (one per seed and ``teacher.augment``), then runs the grid one
budget at a time, cheapest first: every (teacher DA, DA, seed) of ``--das`` × ``--seeds``, then,
with ``--more-seeds``, the DAs of ``--always`` (minimal and auto) and the ``--top`` best fixed DAs of
that budget (by their mean test accuracy over ``--seeds``) at the extra seeds, so that the
comparisons that decide the rule are paired over enough seeds. Each job is its own
``python -m daqkd.run`` process. Before a budget starts it predicts how long that budget takes from
the budgets already run (a per-job overhead plus a per-epoch cost, fitted to their wall times) and
starts it only if it fits in what is left, so the longest budget run is the longest that fits. A
budget that no longer fits is skipped, with a line saying so; a job still running at the deadline is
stopped (SIGTERM: it saves ``last.ckpt``, and the next run of the grid resumes it).

While it runs: ``echo 1 > DIR/parallel`` changes how many jobs run at once (from the next start),
and ``touch DIR/drain`` lets the running jobs finish, starts no other, and ends the grid (run the
same command again to go on; the file is removed then).

The folders are those of the experiment's own sweep (``DIR/teacher_<DA>/e<epochs>/<DA>/seed<S>``),
so ``python -m daqkd.report DIR`` reads them, and a job whose ``results.json`` says ``ok`` is
skipped when the grid is run again. ``plan.json`` in DIR records the measured costs and decisions.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daqkd.augment.registry import PAPER_POOL
from daqkd.result import RunResult

DRAIN, PARALLEL = "drain", "parallel"  # files in the grid's folder that steer a running grid


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


def test_acc(folder: Path) -> float | None:
    """The student's test accuracy of a finished run in ``folder``, else None."""
    try:
        result = RunResult.load(folder / "results.json")
    except (OSError, ValueError, TypeError):
        return None
    return result.student.test_acc if result.ok and result.student is not None else None


def best_fixed(accuracies: dict[str, list[float]], top: int, exclude: set[str]) -> list[str]:
    """The ``top`` DAs with the highest mean accuracy, among those not in ``exclude`` (ties: the
    first in the order given)."""
    ranked = sorted((d for d in accuracies if d not in exclude and accuracies[d]), key=lambda d: -statistics.fmean(accuracies[d]))
    return ranked[:top]


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
        (self.out / DRAIN).unlink(missing_ok=True)  # a new run of the grid goes on
        self.drained = False
        self.plan: dict = {"minutes": args.minutes, "parallel": args.parallel, "experiment": args.experiment, "budgets": [], "teachers": []}
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def command(self, module: str, overrides: list[str], folder: Path) -> list[str]:
        return [sys.executable, "-m", module, f"experiment={self.args.experiment}", "hydra.mode=RUN",
                f"hydra.run.dir={folder}", *self.args.overrides, *overrides]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def parallel(self) -> int:
        """Jobs at once: ``DIR/parallel`` when it holds a whole number ≥ 1, else ``--parallel``."""
        try:
            n = int((self.out / PARALLEL).read_text().strip())
        except (OSError, ValueError):
            return self.args.parallel
        return n if n >= 1 else self.args.parallel

    def draining(self) -> bool:
        if not self.drained and (self.out / DRAIN).exists():
            print(f"{self.out / DRAIN}: the running jobs finish, no other starts", flush=True)
            self.drained = True
        return self.drained

    def save_plan(self) -> None:
        (self.out / "plan.json").write_text(json.dumps(self.plan, indent=1) + "\n")

    def run_all(self, jobs: list[Job], module: str = "daqkd.run") -> None:
        """Run ``jobs``, ``parallel`` at once, until done, drained or the deadline (then SIGTERM)."""
        queue, running = list(jobs), []
        while (queue and not self.draining()) or running:
            while queue and len(running) < self.parallel() and not self.draining():
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
        jobs = [Job(t, 0, "teacher", s, self.out / "teachers" / f"{t}_seed{s}") for t in a.teachers for s in a.seeds + a.more_seeds]
        start = time.monotonic()
        self.run_all(jobs, "daqkd.train_teacher")
        self.plan["teachers"] = {"jobs": len(jobs), "seconds": time.monotonic() - start}
        print(f"teachers: {len(jobs)} in {time.monotonic() - start:.0f} s", flush=True)

    def budgets(self) -> None:
        a = self.args
        records: list[tuple[int, float]] = []
        last = 0
        for planned in a.epochs:
            if self.draining():
                break
            epochs = planned
            jobs = self.jobs(epochs)
            todo = [j for j in jobs if not j.done()]
            more = self.more_count(epochs)
            entry = {"epochs": epochs, "jobs": len(jobs) + more, "to_run": len(todo) + more}
            if records and todo:
                overhead, per_epoch = fit_costs(records)
                need = predict(len(todo) + more, epochs, self.parallel(), overhead, per_epoch)
                entry.update(overhead_s=overhead, per_epoch_s=per_epoch, predicted_s=need, left_s=self.left())
                if need > self.left():
                    fit = longest_fit(self.left(), len(jobs) + more, self.parallel(), overhead, per_epoch)
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
                                 predicted_s=predict(len(todo) + more, fit, self.parallel(), overhead, per_epoch))
            start = time.monotonic()
            self.run_all(todo)
            if a.more_seeds and not self.draining() and self.left() > 0:
                extra = self.more_jobs(epochs)
                entry["more"] = {"das": sorted({j.da for j in extra}), "seeds": a.more_seeds}
                jobs, extra_todo = jobs + extra, [j for j in extra if not j.done()]
                self.run_all(extra_todo)
                todo += extra_todo
            finished = [j for j in todo if j.done() and j.seconds > 0]
            records += [(j.epochs, j.seconds) for j in finished]
            entry.update(seconds=time.monotonic() - start, finished=sum(j.done() for j in jobs), jobs=len(jobs))
            self.plan["budgets"].append(entry)
            self.save_plan()
            print(f"budget {epochs} epochs: {entry['finished']} of {len(jobs)} jobs ok in {entry['seconds']:.0f} s", flush=True)
            last = epochs
            if self.left() <= 0 or epochs != planned or self.draining():
                break

    def jobs(self, epochs: int, seeds: list[int] | None = None, das: list[str] | None = None, teachers: list[str] | None = None) -> list[Job]:
        a = self.args
        jobs = [Job(t, epochs, da, s, self.out / f"teacher_{t}" / f"e{epochs}" / da / f"seed{s}")
                for t in teachers or a.teachers for s in seeds or a.seeds for da in das or a.das]
        return sorted(jobs, key=lambda j: cost_rank(j.da))

    def more_count(self, epochs: int) -> int:
        """How many jobs ``--more-seeds`` adds to a budget (for its prediction)."""
        a = self.args
        return len(a.teachers) * len(a.more_seeds) * (len(a.always) + a.top) if a.more_seeds else 0

    def more_jobs(self, epochs: int) -> list[Job]:
        """The jobs at ``--more-seeds``: the DAs of ``--always`` and, per teacher, the ``--top`` fixed
        DAs of this budget with the best mean test accuracy over ``--seeds`` (finished runs only)."""
        a = self.args
        jobs = []
        for t in a.teachers:
            accuracies = {da: [acc for s in a.seeds if (acc := test_acc(self.out / f"teacher_{t}" / f"e{epochs}" / da / f"seed{s}")) is not None]
                          for da in a.das}
            best = best_fixed(accuracies, a.top, set(a.always) | {"auto"})
            print(f"budget {epochs} epochs, teacher {t}: the best fixed DAs over seeds {a.seeds}: {', '.join(best) or 'none finished'}",
                  flush=True)
            jobs += self.jobs(epochs, a.more_seeds, list(dict.fromkeys(a.always + best)), [t])
        return jobs


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
    ap.add_argument("--das", type=lambda s: s.split(","), default=list(PAPER_POOL), help="augment.name values (auto included)")
    ap.add_argument("--experiment", default="budget_fashion_mnist_da", help="the experiment= every job composes")
    ap.add_argument("--more-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[],
                    help="extra seeds for --always and the --top best fixed DAs of each budget")
    ap.add_argument("--always", type=lambda s: s.split(","), default=["minimal", "auto"], help="DAs always run at --more-seeds")
    ap.add_argument("--top", type=int, default=2, help="how many of the best fixed DAs run at --more-seeds")
    ap.add_argument("overrides", nargs="*", help="config overrides for every job (after --)")
    args = ap.parse_args(argv)
    if args.epochs != sorted(args.epochs):
        ap.error("--epochs must be in increasing order (cheapest first)")
    if set(args.seeds) & set(args.more_seeds):
        ap.error("--more-seeds must not repeat a seed of --seeds")
    grid = Grid(args)
    grid.teachers()
    grid.budgets()
    grid.plan["seconds_left"] = grid.left()
    grid.save_plan()
    return 0


if __name__ == "__main__":
    sys.exit(main())
