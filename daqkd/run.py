"""Entry point: ``python -m daqkd.run [group=option ...] [key=value ...]``.

config → datamodule and teacher → student built from the teacher and calibrated → the DA metric
callback picks and installs the DA → QAT+KD fit → test → results.json (docs/METHOD.md; README for the
commands). The builders live in daqkd.build; this module only wires them in order.
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from daqkd.build import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_selection,
    build_student,
    build_teacher,
    build_trainer,
    resolve_ckpt_path,
)
from daqkd.compile import AutoCompile
from daqkd.config import check_command_line, config_dir, normalize_overrides, validate_config
from daqkd.distributed import SpawnedRankTeardown
from daqkd.errors import ConfigError, DaqkdError, Preempted, reported_as_one_line
from daqkd.io import CheckpointOnSigterm
from daqkd.metric.callback import DAMetricCallback
from daqkd.provenance import peak_rss_mb, provenance, sha256_file
from daqkd.quant import summary
from daqkd.result import RunResult, StudentResult, TeacherResult
from daqkd.rundir import discard_refused, keep_original, original_dir, relaunch, resume_or_start
from daqkd.torchutil import set_threads, usable_cores

REFUSED_DIR = ".daqkd-refused"  # in a sweep folder: one empty file per job refused in a launch (SweepOutcome counts them)

log = logging.getLogger("daqkd")

# The frozen teacher is kept in eval mode on purpose (QATKDModule.train); Lightning warns about it.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Run the whole pipeline for one config; returns what it writes to results.json.

    ``extra_callbacks`` are added to the Trainer's (for instrumenting a run from Python)."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    keep_original(output_dir)  # a valid config: from now on the folder holds this run
    threads = set_threads(cfg.speed.get("threads", "auto"), cfg.dataset.datamodule.num_workers)
    L.seed_everything(cfg.seed, workers=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    datamodule = build_datamodule(cfg)
    datamodule.setup()
    try:
        teacher = build_teacher(cfg, datamodule)
    except SIGTERMException:  # Lightning's is a SystemExit without a code: exit 143 with a line, as in the fit
        raise Preempted("received SIGTERM while training the teacher (nothing cached yet); run the same command again") from None
    log.info("Teacher (%s, %s): test accuracy %.4f", teacher.source, teacher.ckpt, teacher.test_acc)
    seconds["teacher"] = time.perf_counter() - clock

    L.seed_everything(cfg.seed, workers=True)
    resume_from = resolve_ckpt_path(cfg)
    # Resuming restores the learned quantizer state from the checkpoint: no calibration.
    student = build_student(cfg, teacher.model, datamodule if resume_from is None else None)
    module = build_module(cfg, student, teacher.model, datamodule)

    # Select: score the candidate DAs with the teacher (and the calibrated student) and decide which
    # one the student trains with; a resumed run keeps its checkpoint's.
    clock = time.perf_counter()
    selection = build_selection(cfg, datamodule, teacher.model, student, resume_from)
    seconds["scoring"] = time.perf_counter() - clock

    # Fit: DAMetricCallback installs the DA (rank 0's, broadcast) before Lightning builds a loader.
    selector = DAMetricCallback(selection, log_scores=resume_from is None)
    preemption = CheckpointOnSigterm(cfg.callbacks.model_checkpoint.dirpath)
    trainer = build_trainer(cfg, [selector, preemption, SpawnedRankTeardown(), *build_callbacks(cfg), *extra_callbacks])
    clock = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except SIGTERMException:
        raise Preempted(
            f"received SIGTERM; saved {preemption.saved} and stopped. Resume with "
            f"python -m daqkd.run hydra.run.dir={output_dir} ckpt_path=last"
        ) from None
    seconds["fit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    try:
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
    except SIGTERMException:
        raise Preempted(f"received SIGTERM while testing; the fit is done and saved. Finish it with "
                        f"python -m daqkd.run hydra.run.dir={output_dir} ckpt_path=last") from None
    seconds["test"] = time.perf_counter() - clock

    selection = selector.selection
    bits_w, bits_a = student_bits(cfg)
    result = RunResult(
        status="ok",
        selected_augment=selection.selected,
        selection_how=selection.how,
        augment_scores=list(selection.scores),
        teacher=TeacherResult(test_acc=teacher.test_acc, source=teacher.source, ckpt=teacher.ckpt, sha256=sha256_file(teacher.ckpt),
                              augment=cfg.teacher.augment),
        student=StudentResult(test_acc=float(test_metrics["test/acc"]), test_loss=float(test_metrics["test/loss"]),
                              quantizer=cfg.quantizer.name, bits_w=bits_w, bits_a=bits_a, kd=cfg.kd.name, epochs=trainer.current_epoch,
                              ckpt=best or None),
        seconds=seconds,
        peak_rss_mb=peak_rss_mb(),
        compile=next((c.decision for c in trainer.callbacks if isinstance(c, AutoCompile)), None),
        threads={"torch": threads, "loader_workers": cfg.dataset.datamodule.num_workers, "cores": usable_cores()},
        provenance=provenance(),
        config=OmegaConf.to_container(cfg, resolve=True),
        config_composed=OmegaConf.to_container(cfg, resolve=False),  # which values follow the seed or the paths
    )
    if trainer.is_global_zero:  # under DDP every rank gets here; one writes
        (output_dir / "quant_summary.txt").write_text(summary(module.student) + "\n")
        result.write(output_dir / "results.json")
    log.info(
        "Done. DA: %s | teacher test acc %.4f | W%dA%d %s student test acc %.4f | %s",
        selection.selected, teacher.test_acc, bits_w, bits_a, cfg.quantizer.name,
        result.student.test_acc, output_dir / "results.json",
    )
    return result


def student_bits(cfg: DictConfig) -> tuple[int, int]:
    """The student's (weight, activation) bits: 32 where ``quantizer=`` quantizes nothing (fp)."""
    w = cfg.bits.w if cfg.quantizer.get("weight") is not None else 32
    a = cfg.bits.a if cfg.quantizer.get("activation") is not None else 32
    if (w, a) != (cfg.bits.w, cfg.bits.a):
        log.warning("quantizer=%s quantizes no %s: the student is full precision there and recorded as W%dA%d, not W%dA%d",
                    cfg.quantizer.name, "weights or activations" if (w, a) == (32, 32) else ("weights" if w == 32 else "activations"),
                    w, a, cfg.bits.w, cfg.bits.a)
    return w, a


def resume_command(cfg: DictConfig) -> str:
    return f"python -m daqkd.run hydra.run.dir={cfg.paths.output_dir} ckpt_path=last"


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """A failed run's results.json: status "failed", the error and its traceback, how to resume it,
    and the config, so the report counts it as failed (not missing) and leaves it out."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    RunResult(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
              resume=resume_command(cfg), config=OmegaConf.to_container(cfg, resolve=False)).write(output_dir / "results.json")


def run_once(cfg: DictConfig) -> RunResult:
    """A single run (not a sweep job). Refused (a config value, a damaged file, missing data: a
    DaqkdError) it leaves no folder it made and nothing in a folder it did not; failing otherwise
    after it started (a crash, a pre-emption), its results.json says so, why, and how to resume."""
    folder = Path(cfg.paths.output_dir)
    started_before = original_dir(folder).is_dir()  # an earlier launch's run: never removed
    try:
        cfg = resume_or_start(cfg)
        return train(cfg)
    except Exception as e:
        user_error = isinstance(e, DaqkdError) and not isinstance(e, Preempted)
        if user_error or not original_dir(folder).is_dir():
            if not started_before:
                discard_refused(folder, this_launch=True)
        else:
            record_failure(cfg, e)
            log.error("the run failed (%s: %s); recorded in %s/results.json. Resume with: %s", type(e).__name__, e, folder,
                      resume_command(cfg))
        raise


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with reported_as_one_line():
            return run_once(cfg).student.test_acc  # the sweep objective
    job = HydraConfig.get().job.num
    try:
        done = relaunch(cfg)
        if done is None:
            validate_config(cfg)
    except ConfigError as e:  # refused before anything ran: nothing is recorded over the folder's run
        discard_refused(Path(cfg.paths.output_dir))
        log.error("job %s refused: %s", job, e)
        marks = Path(HydraConfig.get().sweep.dir) / REFUSED_DIR
        marks.mkdir(parents=True, exist_ok=True)
        (marks / f"job{job}").touch()  # in the sweep's folder, not the job's: whichever process ran the job
        return float("nan")
    if done is not None:
        log.info("job %s: finished before (%s), skipped", job, Path(cfg.paths.output_dir) / "results.json")
        return done.student.test_acc
    try:
        return train(cfg).student.test_acc
    except Preempted as e:  # the whole sweep stops, as SLURM's pre-emption and a user's kill mean
        print(f"daqkd: received SIGTERM in sweep job {job}, which saved {cfg.callbacks.model_checkpoint.dirpath}/last.ckpt; "
              f"the sweep stopped. Relaunch the same command with hydra.sweep.dir={HydraConfig.get().sweep.dir} to go on "
              "where it stopped (finished jobs are skipped, this one resumes)", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except Exception as e:
        # In a sweep one failing job must not end the others: record it and go on.
        record_failure(cfg, e)
        log.error("job %s failed (%s: %s); recorded in %s/results.json, the sweep goes on",
                  HydraConfig.get().job.num, type(e).__name__, e, cfg.paths.output_dir)
        return float("nan")


class SweepOutcome(Callback):
    """At the end of a sweep: one line counting the jobs of this launch that failed or were refused,
    and a non-zero exit, so a script or a scheduler sees that the sweep did not do all it was asked.
    Counted from files (the jobs may run in other processes: joblib, submitit), written since the
    launch started."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time() - 1.0

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir)
        since = getattr(self, "started", 0.0)
        failed = []
        for path in sorted(folder.rglob("results.json")):
            try:
                if path.stat().st_mtime >= since and RunResult.load(path).status == "failed":
                    failed.append(path.parent)
            except (OSError, ValueError, TypeError):
                continue
        refused = [p for p in (folder / REFUSED_DIR).glob("job*") if p.stat().st_mtime >= since] if (folder / REFUSED_DIR).is_dir() else []
        if failed or refused:
            where = f"; see {failed[0]}/results.json" if failed else ""
            print(f"daqkd: error: {len(failed)} sweep job(s) failed and {len(refused)} were refused in {folder}{where}",
                  file=sys.stderr, flush=True)
            raise SystemExit(1)


def main() -> None:
    with reported_as_one_line():
        check_command_line(sys.argv[1:])
    sys.argv[1:] = normalize_overrides(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
