"""The teacher command trains once and then reuses the cache (daqkd/train_teacher.py)."""
import os
import subprocess
import sys

import pytest
import torch

from daqkd.models import create_model


@pytest.mark.slow
def test_teacher_command_trains_and_caches(tmp_path, entry_point):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "daqkd.train_teacher", "debug=fast", "trainer.enable_progress_bar=false"]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    cached = list((tmp_path / ".cache" / "teachers").glob("fashion_mnist_resnet20_*.pt"))
    assert len(cached) == 1
    weights = torch.load(cached[0], weights_only=True)["state_dict"]
    assert not torch.equal(weights["fc.weight"], create_model("resnet20", 10, 1).fc.weight)  # trained, not an init
    stamp = cached[0].stat().st_mtime_ns
    second = entry_point(tmp_path, *args[3:], module="daqkd.train_teacher")  # in this process: seconds faster
    assert second.returncode == 0, second.stderr[-2000:]
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not trained and written again
