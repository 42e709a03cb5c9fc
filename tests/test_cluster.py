"""Sweeps beyond one process: cluster=slurm (a SLURM array through hydra-submitit-launcher, with
requeue), cluster=local (submitit's local executor, jobs in parallel) sharing one teacher cache
(conf/cluster/, daqkd/teacher.py's file lock)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

pytestmark = pytest.mark.slow


def sweep(tmp_path, *args, env=None, timeout=600):
    """A sweep of TINY runs from ``tmp_path`` (``env`` decides the teacher cache: DAQKD_ROOT's own unless given)."""
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path), **(env or {})}
    return subprocess.run([sys.executable, "-m", "daqkd.run", "-m", *TINY, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_slurm_sweep_is_one_array_that_requeues(tmp_path):
    """Without a cluster: fake sbatch/srun on PATH; the array script submitit writes is checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_COPY"\necho "sbatch: not a cluster" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    copy = tmp_path / "sbatch.sh"
    p = sweep(tmp_path, "cluster=slurm", "augment=minimal,cutmix,trivialaugment", "hydra.launcher.partition=gpu",
              "hydra.launcher.array_parallelism=2", env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_COPY": str(copy)},
              timeout=120)
    assert "not a cluster" in p.stderr
    script = copy.read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --time=720",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@300", "#SBATCH --ntasks-per-node=1"):
        assert line in script, line
    # A requeued job resumes: every job runs with ckpt_path=last, and submitit calls the launcher's
    # checkpoint() on USR2 to resubmit it with the same overrides (up to max_num_timeout times).
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base=None):
        cfg = compose("config", overrides=["cluster=slurm"], return_hydra_config=True)
    assert cfg.ckpt_path == "last" and cfg.hydra.launcher.max_num_timeout == 5
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and callable(SlurmLauncher.checkpoint)


def test_local_sweep_runs_in_parallel_and_trains_the_teacher_once(tmp_path):
    # An empty cache of its own (the test is about it); a teacher of two steps.
    p = sweep(tmp_path, "cluster=local", "augment=minimal,cutmix", "metric.score_fixed=false", "teacher.limit_train_batches=2")
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in sorted((tmp_path / "multirun").rglob("results.json"))]
    assert len(results) == 2 and {r["selected_augment"] for r in results} == {"minimal", "cutmix"}
    # Both jobs started together on an empty cache: one trained the teacher under the lock, the
    # other waited and loaded the same file.
    assert sorted(r["teacher"]["source"] for r in results) == ["cache", "trained"]
    assert results[0]["teacher"]["ckpt"] == results[1]["teacher"]["ckpt"]
    assert results[0]["teacher"]["sha256"] == results[1]["teacher"]["sha256"]
    assert len(list(Path(tmp_path / ".cache" / "teachers").glob("*.pt"))) == 1


def test_joblib_sweep_starts_loader_workers(tmp_path, subprocess_env):
    # loky's job processes install a default start method that cannot start a DataLoader's workers
    # ('Process' object has no attribute 'env'): every job of a joblib sweep with workers failed.
    p = sweep(tmp_path, "cluster=joblib", "augment=minimal,cutmix", "dataset.datamodule.num_workers=1", env=subprocess_env)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in sorted((tmp_path / "multirun").rglob("results.json"))]
    assert [r["status"] for r in results] == ["ok", "ok"], [r.get("error") for r in results]


def test_a_killed_sweep_relaunched_goes_on_where_it_stopped(tmp_path, subprocess_env):
    import signal
    import time

    args = ["augment=minimal,cutmix,augmix", f"hydra.sweep.dir={tmp_path / 'sw'}"]
    env = subprocess_env
    proc = subprocess.Popen([sys.executable, "-m", "daqkd.run", "-m", *TINY, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "sw" / "0" / "results.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # midway: job 0 finished, job 1 running or about to start
    proc.wait()
    assert json.loads(first.read_text())["status"] == "ok"
    assert not (tmp_path / "sw" / "2" / "results.json").exists()
    stamp = first.stat().st_mtime_ns
    p = sweep(tmp_path, *args, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "job 0: finished before" in p.stderr + p.stdout
    assert first.stat().st_mtime_ns == stamp  # the finished job was not run again
    results = [json.loads((tmp_path / "sw" / str(j) / "results.json").read_text()) for j in range(3)]
    assert [r["selected_augment"] for r in results] == ["minimal", "cutmix", "augmix"]
    assert all(r["status"] == "ok" for r in results)
    # Another config into the same folders is refused, job by job, and nothing finished is rewritten.
    p = sweep(tmp_path, *args, "kd.alpha=1.0", env=env)
    assert first.stat().st_mtime_ns == stamp
    assert "holds a run of another config (differs in kd.alpha)" in p.stderr + p.stdout
    assert (tmp_path / "sw" / "0" / ".hydra" / "config.yaml").read_text() == \
        (tmp_path / "sw" / "0" / ".hydra" / "original" / "config.yaml").read_text()
    assert "kd.alpha=1.0" not in (tmp_path / "sw" / "0" / ".hydra" / "overrides.yaml").read_text()
