"""Hostile inputs, as a new user tries them: each ends in one line saying what is wrong and what to do,
a non-zero exit, and nothing of the user's deleted, rewritten or left misleading (daqkd/rundir.py,
daqkd/config.py check_command_line, daqkd/teacher.py's cache, daqkd/data/files.py's decoding)."""
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from daqkd import build


def cli(tmp_path, *args, module="daqkd.run", timeout=300):
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path), "DAQKD_CACHE": str(CACHE[0])}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DAQKD_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line(p, *names, code=2):
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("daqkd: error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


FAST = TINY
CACHE = [None]  # the session's teacher cache, for the subprocesses (set by the fixture below)


@pytest.fixture(autouse=True)
def shared_teacher(teacher_cache, monkeypatch):
    CACHE[0] = teacher_cache
    monkeypatch.setenv("DAQKD_CACHE", str(teacher_cache))


@pytest.mark.slow
def test_resume_takes_the_runs_own_config_and_refuses_what_contradicts_it(tmp_path, entry_point):
    run = tmp_path / "run"
    p = cli(tmp_path, *FAST, "augment=cutmix", "trainer.max_epochs=2", f"hydra.run.dir={run}")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    # The README's resume: the folder and ckpt_path alone. The run's own overrides apply.
    p = cli(tmp_path, f"hydra.run.dir={run}", "ckpt_path=last")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((run / "results.json").read_text())
    assert r["selected_augment"] == "cutmix" and r["student"]["epochs"] == 2 and r["config"]["metric"]["score_student"] is False
    assert (run / "csv" / "metrics.csv").read_text().splitlines()[: len(rows) - 1] == rows[: len(rows) - 1]  # the curves kept
    before = snapshot(run)
    for bad, key in ((["augment=minimal"], "augment.name"), (["trainer.max_epochs=5"], "trainer.max_epochs")):
        p = entry_point(tmp_path, f"hydra.run.dir={run}", "ckpt_path=last", *bad)
        one_line(p, f"resuming it with {key} changed is refused", "debug=fast", f"hydra.run.dir={run} ckpt_path=last")
        assert snapshot(run) == before  # .hydra put back, nothing else touched
    p = entry_point(tmp_path, *FAST, f"hydra.run.dir={run}")  # a new run into the folder of a finished one
    one_line(p, "already holds a run", "ckpt_path=last")
    assert snapshot(run) == before


@pytest.mark.slow
def test_sigterm_stops_a_local_sweep_and_says_how_to_go_on(tmp_path):
    sweep = tmp_path / "sw"
    env = {**os.environ, "DAQKD_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "daqkd.run", "-m", *FAST, "trainer.max_epochs=200", "augment=minimal,cutmix",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and time.monotonic() < deadline:  # job 0 is inside its fit
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert f"hydra.sweep.dir={sweep}" in err and "the sweep stopped" in err
    assert not (sweep / "1").exists()  # the sweep did not go on with the next job
    assert not (sweep / "0" / "results.json").exists() and last.is_file()


@pytest.mark.slow
def test_a_sweep_whose_jobs_failed_exits_non_zero_with_a_count(tmp_path, entry_point):
    # The teacher file is read once a job runs (a valid config): both jobs fail, and the sweep says so.
    p = entry_point(tmp_path, "-m", *FAST, f"teacher.ckpt={tmp_path}/missing.pt", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sw'}")
    line = one_line(p, "2 sweep job(s) failed and 0 were refused", code=1)
    assert str(tmp_path / "sw") in line


@pytest.mark.parametrize("args,names", [
    (["augment=auto", "pool=nope"], ["pool=nope is not an option of pool", "paper, reference16"]),
    (["-m", "augment=minimal,nope"], ["augment=nope is not an option of augment"]),
    (["dataset=imagefolder"], ["dataset.datamodule.source_options.folder is not set", "e.g.", "dataset.num_classes"]),
    (["dataset=imagefolder", "dataset.datamodule.source_options.folder=/x"], ["dataset.num_classes is not set", "e.g. dataset.num_classes=10"]),
    (["hydra.run.dir=/proc/daqkd"], ["hydra.run.dir=/proc/daqkd cannot be written"]),
    (["trainer.max_epoch=3"], ["trainer.max_epoch"]),
    (["augment.pool=[minimal,nope]"], ["augment.pool: 'nope' is not a DA"]),
    (["metric.selector=student_m", "quantizer=fp"], ["metric.selector=student_m", "quantizer=fp quantizes nothing"]),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path, entry_point, args, names):
    """In this process, through the real entry point; the check before Hydra starts covers what Hydra
    itself would print as a block (exit 1)."""
    p = entry_point(tmp_path, *([*args, "debug=fast"] if args[0] == "-m" else ["debug=fast", *args]))
    one_line(p, *names)
    if "augment.pool" in args[-1]:  # the DAs listed once, mixup among them (documented in the README)
        line = next(ln for ln in p.stderr.splitlines() if ln.startswith("daqkd: error"))
        assert line.count("trivialaugment") == 1 and "mixup" in line
    assert not list(tmp_path.rglob("results.json"))


def test_an_fp_student_is_recorded_as_32_bits(make_cfg, caplog):
    from daqkd.run import student_bits

    with caplog.at_level(logging.WARNING):
        assert student_bits(make_cfg("quantizer=fp", "bits=3", "kd=kd")) == (32, 32)
    assert "recorded as W32A32, not W3A3" in caplog.text
    assert student_bits(make_cfg("bits=3")) == (3, 3)


def test_the_students_batch_size_does_not_retrain_the_teacher(make_cfg):
    cfgs = [make_cfg(f"dataset.datamodule.batch_size={b}") for b in (64, 16)]
    paths = {build.teacher_cache_path(c, build.build_datamodule(c)) for c in cfgs}
    assert len(paths) == 1
    other = make_cfg("teacher.batch_size=32")
    assert build.teacher_cache_path(other, build.build_datamodule(other)) not in paths


def test_a_second_run_says_it_waits_for_the_teacher(make_cfg, fast_teacher, caplog):
    from filelock import FileLock

    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    lock = FileLock(str(build.teacher_cache_path(cfg, dm)) + ".lock")
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(build.build_teacher(cfg, dm)))
    with caplog.at_level(logging.INFO, logger="daqkd.teacher"):
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and "waiting for the teacher being trained by another process (lock file" in caplog.text
        lock.release()
        t.join(timeout=120)
    assert got and got[0].source == "cache"


def test_a_read_only_cache_that_holds_the_teacher_is_used(make_cfg, fast_teacher, monkeypatch, tmp_path):
    import daqkd.teacher as teacher

    cfg = make_cfg()
    monkeypatch.setattr(teacher, "_unwritable", lambda folder: "Read-only file system")
    info = build.build_teacher(cfg, build.build_datamodule(cfg))
    assert info.source == "cache" and 0 < info.test_acc <= 1
    other = make_cfg("seed=7")  # a teacher the read-only cache does not hold
    from daqkd.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be written .Read-only file system. and holds no teacher"):
        build.build_teacher(other, build.build_datamodule(other))


def test_files_daqkd_writes_get_the_umask_mode(tmp_path):
    from daqkd.io import atomic_torch_save, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_torch_save({"x": torch.zeros(2)}, tmp_path / "a.pt")
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        os.umask(0o002)
        atomic_write_json(tmp_path / "g.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0o600
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "g.json").stat().st_mode & 0o777 == 0o664


def test_image_modes_are_decoded_right_and_resizing_is_announced(tmp_path, caplog):
    from daqkd.data.files import ImageFiles

    d = tmp_path / "imgs"
    d.mkdir()
    wide = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)  # 0, 1, 128, 255 on 8 bits
    Image.fromarray(wide).save(d / "a16.png")  # Pillow: mode I;16 (or I), 16-bit grey
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(d / "b.png")  # L
    pal = Image.fromarray(np.full((4, 4), 200, np.uint8)).convert("P")
    pal.save(d / "c.png")
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, 255
    Image.fromarray(rgba, "RGBA").save(d / "d.png")
    paths = sorted(d.glob("*.png"))
    with caplog.at_level(logging.WARNING):
        grey = ImageFiles(paths, [0, 1, 0, 1], size=4, channels=1)
    assert Image.open(paths[0]).mode.startswith("I")
    assert grey.image(0)[0, 0].tolist() == [0, 1, 128, 255]  # scaled, not clipped to 255
    assert int(grey.image(1).float().mean()) == 77 and int(grey.image(2).float().mean()) == 200
    assert "1 of 4 images are not 4×4 and are resized" in caplog.text and "8×6 (1)" in caplog.text
    assert "1 images have more than 8 bits per pixel" in caplog.text
    rgb = ImageFiles(paths, [0, 1, 0, 1], size=4, channels=3)
    assert rgb.image(0).shape == (3, 4, 4) and rgb.image(0)[:, 0, 3].tolist() == [255, 255, 255]
    assert rgb.image(3)[0].float().mean() == 90 and rgb.image(3)[1].float().mean() == 0


def test_sigterm_while_the_teacher_trains_is_a_preemption(make_cfg, monkeypatch):
    """Lightning's SIGTERMException is a SystemExit without a code: outside the fit it ended the
    process with status 0 and no word. The teacher's training and the test stage stop as the fit does."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from daqkd import run
    from daqkd.errors import Preempted

    def sigterm(*a, **k):
        raise SIGTERMException

    monkeypatch.setattr(run, "build_teacher", sigterm)
    with pytest.raises(Preempted, match="SIGTERM while training the teacher") as e:
        run.train(make_cfg())
    assert e.value.exit_code == 143


def test_the_sweep_outcome_counts_this_launch_only(tmp_path):
    """A relaunched sweep whose earlier failures were redone ends well; one whose jobs fail now does not."""
    from omegaconf import OmegaConf

    from daqkd.result import RunResult
    from daqkd.run import SweepOutcome

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    (tmp_path / "0").mkdir()
    RunResult(status="failed", config={}, error="old").write(tmp_path / "0" / "results.json")
    os.utime(tmp_path / "0" / "results.json", (time.time() - 3600,) * 2)
    outcome = SweepOutcome()
    outcome.on_multirun_start(cfg)
    outcome.on_multirun_end(cfg)  # only an old failure: no exit
    RunResult(status="failed", config={}, error="new").write(tmp_path / "0" / "results.json")
    with pytest.raises(SystemExit):
        outcome.on_multirun_end(cfg)


def test_hydra_flags_that_take_a_value_are_left_to_hydra():
    from daqkd.config import check_command_line

    check_command_line(["-cd", "/tmp/elsewhere", "-cn", "other", "seed=1"])  # no attempt to read /tmp/elsewhere as an override


def test_a_quoted_group_option_is_the_option_hydra_reads():
    """``bits='4'`` (how a shell script quotes it) is Hydra's option 4; the check before Hydra starts
    read the quotes as part of the name and refused a valid run."""
    from daqkd.config import ConfigError, check_command_line

    check_command_line(["debug=fast", "bits='4'"])
    check_command_line(["-m", "debug=fast", 'bits="4",2'])
    with pytest.raises(ConfigError, match="bits=5 is not an option of bits"):
        check_command_line(["debug=fast", "bits='5'"])


def test_a_pool_of_combined_das_sweeps_as_augment_names(make_cfg):
    from daqkd.config import _sweep, validate_config

    cfg = make_cfg("pool=reference16")
    assert "trivialaugment+cutmix" in _sweep(cfg.augment.pool, "auto").split(",")
    validate_config(make_cfg("augment.name=trivialaugment+cutmix", "paths.output_dir=/tmp/x"))
