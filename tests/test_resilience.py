"""Nothing is lost: a run killed mid-epoch (SIGKILL) and resumed with ckpt_path=last ends with exactly
the metrics of an uninterrupted run; SIGTERM (pre-emption) leaves a checkpoint to resume from."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TEST_MODEL

pytestmark = pytest.mark.slow

# Three epochs of four steps: the kill lands inside an epoch after a checkpoint, with a δ estimate per epoch.
ARGS = ["debug=fast", TEST_MODEL, "trainer.max_epochs=3", "trainer.deterministic=true", "augment=trivialaugment", "metric.score_fixed=false",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "dataset.datamodule.test_subset=64",
        "quantizer.callback.num_batches=1", "quantizer.callback.probes=1"]


def start(tmp_path, run_dir, *extra):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "daqkd.run", *ARGS, f"hydra.run.dir={run_dir}", *extra], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epoch(run_dir, epoch, proc, timeout=600):
    """Until last.ckpt holds ``epoch`` completed epochs (the run is then inside the next one)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        if last.is_file():
            try:
                if torch.load(last, weights_only=False, map_location="cpu")["epoch"] >= epoch - 1:
                    return
            except Exception:  # being replaced; the rename is atomic, so the next look is whole
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no checkpoint of epoch {epoch} in {timeout}s")


@pytest.fixture(autouse=True)
def shared_teacher(monkeypatch, teacher_cache):
    monkeypatch.setenv("DAQKD_CACHE", str(teacher_cache))  # the runs load the session's teacher


def results(run_dir):
    r = json.loads((run_dir / "results.json").read_text())
    return r["student"]["test_acc"], r["student"]["test_loss"], r["selected_augment"]


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    whole = start(tmp_path, tmp_path / "whole")
    assert whole.wait(timeout=900) == 0, whole.stdout.read()[-3000:]

    run_dir = tmp_path / "killed"
    proc = start(tmp_path, run_dir)
    wait_for_epoch(run_dir, 1, proc)
    time.sleep(0.5)  # into epoch 1 (its δ estimate or its first steps)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "results.json").exists()
    resumed = start(tmp_path, run_dir, "ckpt_path=last")
    out = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert results(run_dir) == results(tmp_path / "whole")


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(tmp_path, run_dir)
    wait_for_epoch(run_dir, 1, proc)
    step_before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert "received SIGTERM" in out and "ckpt_path=last" in out and "Traceback" not in out
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] >= step_before  # written at the SIGTERM, not only at the last epoch end
    resumed = start(tmp_path, run_dir, "ckpt_path=last")
    out = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["student"]["epochs"] == 3
