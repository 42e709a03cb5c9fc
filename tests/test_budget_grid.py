"""The budget grid driver (daqkd/budget_grid.py): which jobs it plans, the extra seeds for the best
fixed DAs of a budget, the files that steer a running grid, the cost fit; and daqkd.interval."""
import argparse
import json
import sys

import pytest
from omegaconf import OmegaConf

import daqkd.config  # noqa: F401  (registers the resolvers)
from daqkd.budget_grid import Grid, best_fixed, fit_costs, longest_fit, main, predict


def args(tmp_path, **kw):
    base = dict(out=tmp_path / "grid", minutes=10.0, parallel=1, threads=1, teachers=["minimal"], seeds=[0, 1, 2], epochs=[16],
                das=["minimal", "cutmix", "augmix", "randaugment", "auto"], experiment="budget_fashion_mnist_long",
                more_seeds=[3, 4], always=["minimal", "auto"], top=2, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def finished(folder, acc):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"status": "ok", "config": {},
                                                     "student": {"test_acc": acc, "quantizer": "ewgs", "bits_w": 2, "bits_a": 2, "kd": "kd"}}))


def test_best_fixed_ranks_by_mean_and_leaves_out_the_always_run():
    acc = {"minimal": [0.9, 0.9], "cutmix": [0.8, 0.7], "augmix": [0.85, 0.86], "randaugment": [0.7, 0.95], "auto": [0.99], "x": []}
    # means: augmix 0.855, randaugment 0.825, cutmix 0.75; minimal and auto excluded; x has no run
    assert best_fixed(acc, 2, {"minimal", "auto"}) == ["augmix", "randaugment"]
    assert best_fixed(acc, 5, {"minimal", "auto"}) == ["augmix", "randaugment", "cutmix"]


def test_more_jobs_take_always_and_the_best_fixed_das_of_that_budget(tmp_path):
    a = args(tmp_path)
    for seed, accs in enumerate([(0.80, 0.70, 0.75, 0.72), (0.80, 0.74, 0.73, 0.76), (0.80, 0.72, 0.71, 0.77)]):
        for da, acc in zip(["minimal", "cutmix", "augmix", "randaugment"], accs):
            finished(a.out / "teacher_minimal" / "e16" / da / f"seed{seed}", acc)
    finished(a.out / "teacher_minimal" / "e16" / "auto" / "seed0", 0.99)  # auto is never a "best fixed DA"
    grid = Grid(a)
    jobs = grid.more_jobs(16)
    # means: randaugment 0.75, augmix 0.73, cutmix 0.72
    assert sorted((j.da, j.seed) for j in jobs) == sorted((d, s) for d in ["minimal", "auto", "randaugment", "augmix"] for s in [3, 4])
    assert all(j.folder == a.out / "teacher_minimal" / "e16" / j.da / f"seed{j.seed}" for j in jobs)
    assert grid.more_count(16) == len(jobs)


def test_the_parallel_and_drain_files_steer_a_running_grid(tmp_path):
    a = args(tmp_path)
    a.out.mkdir()
    (a.out / "drain").touch()  # left from an earlier run: a new run goes on
    grid = Grid(a)
    assert not (a.out / "drain").exists() and not grid.draining()
    assert grid.parallel() == 1
    (a.out / "parallel").write_text("3\n")
    assert grid.parallel() == 3
    (a.out / "parallel").write_text("zero")
    assert grid.parallel() == 1
    (a.out / "drain").touch()
    assert grid.draining()


def test_a_drained_grid_starts_no_job(tmp_path, monkeypatch):
    a = args(tmp_path)
    grid = Grid(a)
    started = []
    monkeypatch.setattr("subprocess.Popen", lambda *x, **k: started.append(x))
    (a.out / "drain").touch()
    grid.run_all(grid.jobs(16))
    grid.budgets()
    assert started == []


def test_jobs_run_the_chosen_experiment(tmp_path):
    grid = Grid(args(tmp_path))
    job = grid.jobs(16)[0]
    command = grid.command("daqkd.run", [], job.folder)
    assert command[:4] == [sys.executable, "-m", "daqkd.run", "experiment=budget_fashion_mnist_long"]


def test_cost_fit_and_prediction():
    overhead, per_epoch = fit_costs([(2, 30.0), (8, 60.0), (32, 180.0)])
    assert per_epoch == pytest.approx(5.0) and overhead == pytest.approx(20.0)
    assert predict(4, 10, 2, 20.0, 5.0) == pytest.approx(1.2 * 2 * 70.0)
    assert longest_fit(1.2 * 2 * 70.0, 4, 2, 20.0, 5.0) == 10


def test_repeated_seeds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "g"), "--minutes", "1", "--seeds", "0,1", "--more-seeds", "1,2"])
    assert e.value.code == 2 and "--more-seeds must not repeat" in capsys.readouterr().err


@pytest.mark.parametrize("epochs, times, every", [(16, 16, 1), (64, 16, 4), (256, 16, 16), (8, 16, 1), (100, 16, 6)])
def test_interval_resolver(epochs, times, every):
    cfg = OmegaConf.create({"e": epochs, "every": f"${{daqkd.interval:${{e}},{times}}}"})
    assert cfg.every == every
