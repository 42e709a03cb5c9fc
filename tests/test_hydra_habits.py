"""Every Hydra habit works on every shipped experiment: printing the job config (resolved too), a
package of it, Hydra's info and help. Each goes through python -m daqkd.run's own main, in process."""
from pathlib import Path

import pytest

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "daqkd" / "conf" / "experiment").glob("*.yaml")) or sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))
HABITS = {"--cfg job": ["--cfg", "job"], "--cfg job --resolve": ["--cfg", "job", "--resolve"],
          "--package": ["--cfg", "job", "--package", "metric"], "--info": ["--info", "config"], "--help": ["--help"]}


def test_the_experiments_are_found():
    assert "budget_fashion_mnist_long" in EXPERIMENTS and len(EXPERIMENTS) >= 10


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_hydra_habit_on_every_experiment(entry_point, tmp_path, experiment):
    extra = [f"experiment={experiment}"] if experiment else []
    for habit, flags in HABITS.items():
        done = entry_point(tmp_path, *extra, *flags)
        assert done.returncode == 0, (experiment, habit, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (experiment, habit)
        if habit == "--cfg job --resolve":
            assert "pool:\n  - minimal" in done.stdout or "- minimal" in done.stdout, (experiment, done.stdout[:500])
        if habit == "--package":
            assert "selector:" in done.stdout
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("multirun"))  # printing makes no run folder
