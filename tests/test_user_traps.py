"""What a careful new user tripped on (issue 28), each as the user meets it: the command line, its
exit code and its one line, the folders it leaves, the version."""
import json
import re

import pytest
from conftest import TEST_MODEL

from daqkd.result import RunResult


def one_line(done):
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.startswith("daqkd: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
    return lines[0]


@pytest.mark.parametrize("override, says", [
    ("+foo=1", "+foo: no part of daqkd reads foo"),
    ("+metric.tiez=2", "did you mean metric.tie_z?"),
    ("+trainer.max_epoch=5", "did you mean trainer.max_epochs?"),
    ("trainer.log_every_n_steps=abc", "trainer.log_every_n_steps='abc' is not allowed: Trainer takes an integer or null there"),
    ("bits.a=5", "bits.a=5 is not supported"),
])
def test_a_refused_value_is_one_line_and_leaves_no_folder(entry_point, tmp_path, override, says):
    done = entry_point(tmp_path, "debug=fast", override, f"hydra.run.dir={tmp_path}/run")
    assert done.returncode == 2 and says in one_line(done)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("module", ["daqkd.train_teacher", "daqkd.score"])
@pytest.mark.parametrize("override, says", [
    ("+teacher.warmup_epoch=1", "did you mean teacher.warmup_epochs?"),
    ("teacher.warmup_epochs=abc", "teacher.warmup_epochs='abc' is not allowed"),
])
def test_the_teacher_and_score_commands_refuse_as_run_does(entry_point, tmp_path, module, override, says):
    """A typo that daqkd.run refuses must not start a teacher's training in the other commands."""
    done = entry_point(tmp_path, "debug=fast", override, module=module)
    assert done.returncode == 2 and says in one_line(done)
    assert not (tmp_path / "outputs").exists()


def test_an_added_trainer_argument_still_works(entry_point, tmp_path):
    from daqkd.config import check_command_line, compose_config, validate_config

    check_command_line(["debug=fast", "+trainer.check_val_every_n_epoch=10"])
    validate_config(compose_config(["debug=fast", "+trainer.check_val_every_n_epoch=10", f"paths.output_dir={tmp_path}"]))


def test_a_refused_sweep_job_leaves_no_folder(entry_point, tmp_path, teacher_cache):
    # bits.a=5 is the second value of the sweep: only the job sees it, after Hydra made its folder.
    done = entry_point(tmp_path, "-m", "debug=fast", TEST_MODEL, "bits.w=2", "bits.a=2,5", "trainer.limit_train_batches=1",
                       "trainer.limit_val_batches=1", "dataset.datamodule.test_subset=64", "augment=minimal", "metric.score_fixed=false",
                       "quantizer.weight.delta_mode=fixed", f"paths.cache_dir={teacher_cache}", f"hydra.sweep.dir={tmp_path}/sweep",
                       "hydra.sweep.subdir=a${bits.a}")
    assert done.returncode == 1 and "1 were refused" in done.stderr
    assert (tmp_path / "sweep" / "a2" / "results.json").is_file() and not (tmp_path / "sweep" / "a5").exists()


def test_a_crashed_run_says_so_in_its_folder_and_the_report_counts_it(entry_point, tmp_path, monkeypatch, teacher_cache):
    def boom(*a, **k):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr("daqkd.run.build_selection", boom)
    folder = tmp_path / "run"
    done = entry_point(tmp_path, "debug=fast", TEST_MODEL, "augment=minimal", f"paths.cache_dir={teacher_cache}", f"hydra.run.dir={folder}")
    assert done.returncode != 0
    result = RunResult.load(folder / "results.json")
    assert result.status == "failed" and "the disk went away" in result.error
    assert result.resume == f"python -m daqkd.run hydra.run.dir={folder} ckpt_path=last"
    assert f"Resume with: python -m daqkd.run hydra.run.dir={folder} ckpt_path=last" in done.stdout + done.stderr
    monkeypatch.undo()
    report = entry_point(tmp_path, str(folder), module="daqkd.report")
    assert report.returncode == 1 and "(1 failed jobs)" in report.stderr


def test_version_names_the_release_and_the_commit(entry_point, tmp_path):
    from daqkd import __version__

    for module in ("daqkd.cli", "daqkd.__main__"):
        if module == "daqkd.__main__":
            import subprocess
            import sys

            out = subprocess.run([sys.executable, "-m", "daqkd", "--version"], capture_output=True, text=True, timeout=120).stdout
        else:
            out = entry_point(tmp_path, "--version", module=module).stdout
        assert re.fullmatch(rf"daqkd {re.escape(__version__)} \(commit ([0-9a-f]{{12}}(\+dirty)?|unknown)\)\n", out), out


def test_help_is_one_line_per_command(entry_point, tmp_path):
    from daqkd.cli import COMMANDS

    out = entry_point(tmp_path, "--help", module="daqkd.cli").stdout
    listed = [ln for ln in out.splitlines() if re.match(r"  [a-z-]+ {2,}\S", ln)]
    assert [ln.split()[0] for ln in listed] == list(COMMANDS)
    assert out.splitlines()[0].startswith("daqkd: quantization-aware training")


def test_one_seed_tables_print_no_nan(tmp_path, capsys):
    from test_report import fake_run

    from daqkd.report import main

    for i, (da, acc) in enumerate((("minimal", 0.8609), ("cutmix", 0.85), ("augmix", 0.86))):
        fake_run(tmp_path / "sw" / str(i), da, 0, acc, m=0.1 * i)
    assert main([str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "| minimal | 86.09 (n=1) |" in out and "-1.09 (n=1: no SE, no p)" in out
    json.dumps(out)
