"""``python -m daqkd.score`` ranks a pool without training a student; a real tiny grid runs end to
end through the score command, a multirun with a failing job, and the report (daqkd/score.py)."""
import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import TINY

from daqkd.score import score


@pytest.mark.slow
def test_score_ranks_the_pool_and_writes_its_files(make_cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("daqkd.build.QATKDModule", lambda *a, **k: pytest.fail("score built a training module"))
    result = score(make_cfg("augment.pool=[minimal,cutmix,trivialaugment]"))
    out = tmp_path / "out"
    on_disk = json.loads((out / "scores.json").read_text())
    assert [s["name"] for s in on_disk["scores"]] == ["minimal", "cutmix", "trivialaugment"]
    from daqkd.metric.scoring import AugmentScore
    from daqkd.metric.select import Rule, decide

    decision = decide([AugmentScore.from_dict(s) for s in on_disk["scores"]], Rule(), 1)  # the shipped rule at 1 epoch
    assert on_disk["best"] == decision.selected == result["best"] and on_disk["how"] == decision.how
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3 and {"m", "m_se", "variance", "student_m", "teacher_acc"} <= set(rows[0])
    assert all(float(r["m_se"]) > 0 and float(r["num_samples"]) == 100 for r in rows)
    assert "<- selected" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_tiny_grid_end_to_end(tmp_path, entry_point):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}

    def cli(module, *args, code=0):
        p = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == code, p.stderr[-3000:]
        return p

    fast = [*TINY, "teacher.limit_train_batches=2"]
    scored = entry_point(tmp_path, *fast, "augment.pool=[minimal,cutmix,trivialaugment]", module="daqkd.score")  # in-process
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert len(list((tmp_path / "outputs" / "score").glob("*/scores.json"))) == 1
    # 3 DAs × 1 seed, plus a batch size of 0 that each of its 3 jobs refuses: the sweep goes on, and counts them.
    p = cli("daqkd.run", "experiment=grid_fashion_mnist_da", *fast,  # the sweep block: every DA of the pool, and auto
            "hydra.sweeper.params.seed=0", "augment.pool=[minimal,cutmix]",
            "dataset.datamodule.batch_size=64,0", f"hydra.sweep.dir={tmp_path}/sweep", code=1)
    assert "0 sweep job(s) failed and 3 were refused" in p.stderr
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    assert len([d for d in (tmp_path / "sweep").iterdir() if d.is_dir() and not d.name.startswith(".")]) == 3  # no refused job's folder
    assert len(list((tmp_path / ".cache" / "teachers").glob("*.pt"))) == 1  # one teacher for the seed, reused
    report = entry_point(tmp_path, str(tmp_path / "sweep"), module="daqkd.report")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "3 runs in 1 setting" in report.stdout and "| augment=auto" in report.stdout
    assert (tmp_path / "sweep" / "scatter.png").is_file()
