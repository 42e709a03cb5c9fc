"""W&B (daqkd/wandb_setup.py): offline without a key, never waiting on the network; a sweep's
folder is the group and its config groups the tags; the DA ranking is a table; a resumed run
continues the same W&B run; the report logs a summary run."""
import json
import subprocess
import sys
import time

import pytest
from conftest import TINY

from daqkd import build
from daqkd.wandb_setup import ID_FILE, logger_kwargs


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_SILENT", "true")


def offline_runs(folder):
    return sorted(folder.rglob("offline-run-*"))


def run_record(run_dir, *expected: bytes, timeout: float = 30.0) -> bytes:
    """The run's .wandb record file once it holds ``expected`` (wandb's service may still be flushing
    it when finish() returns)."""
    deadline = time.monotonic() + timeout
    while True:
        data = next(run_dir.glob("run-*.wandb")).read_bytes()
        if all(e in data for e in expected) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


@pytest.mark.slow
def test_sweep_run_is_offline_grouped_tagged_and_holds_the_ranking_table(tmp_path, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "WANDB_API_KEY"} | {"HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "daqkd.run", "-m", *TINY, "logger=many", "augment=auto",
                        "augment.pool=[minimal,cutmix]"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = next((tmp_path / "multirun").iterdir())
    job = sweep / "0"
    (run,) = offline_runs(job)
    rid = (job / ID_FILE).read_text().strip()
    assert run.name.endswith(rid)
    record = run_record(run, sweep.name.encode(), b"quantizer=ewgs")
    assert sweep.name.encode() in record  # the group
    for tag in (b"quantizer=ewgs", b"bits=2", b"augment=auto", b"dataset=fashion_mnist"):
        assert tag in record, tag
    (table,) = run.glob("files/media/table/augment_scores_*.table.json")
    data = json.loads(table.read_text())
    assert {row[data["columns"].index("name")] for row in data["data"]} == {"minimal", "cutmix"}


def test_an_unreachable_server_means_offline_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    kw = logger_kwargs({"project": "daqkd", "offline": None}, tmp_path)
    assert kw["offline"] is True and time.perf_counter() - start < 10


def test_a_resumed_run_continues_the_same_wandb_run(make_cfg, tmp_path, no_key):
    cfg = make_cfg("logger=wandb", f"paths.output_dir={tmp_path / 'run'}")
    ids = []
    for _ in range(2):  # the first start, then the resumed one in the same run folder
        (logger,) = build.build_loggers(cfg)
        assert logger._wandb_init["resume"] == "allow" and logger._offline
        ids.append(logger.experiment.id)
        logger.experiment.finish()
    assert ids[0] == ids[1] == (tmp_path / "run" / ID_FILE).read_text().strip()
    # Two offline folders (a second start in the same second gets a "-1" suffix), both of that run id.
    assert len(offline_runs(tmp_path / "run")) == 2 and all(f"-{ids[0]}" in r.name for r in offline_runs(tmp_path / "run"))


def test_report_logs_a_summary_run_of_the_sweep_group(tmp_path, no_key):
    from test_report import fake_run

    from daqkd import report

    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for i, (aug, acc) in enumerate([("minimal", 80.0), ("cutmix", 82.0), ("minimal", 81.0), ("cutmix", 83.0)]):
        fake_run(sweep / str(i), aug, i // 2, acc)
    assert report.main([str(sweep), "--wandb"]) == 0
    (run,) = offline_runs(sweep)
    record = run_record(run, sweep.name.encode(), b"summary")
    assert sweep.name.encode() in record and b"summary" in record
    tables = {p.name.split("_")[0] for p in run.glob("files/media/table/*.table.json")}
    assert tables == {"selectors", "runs"}
    assert list(run.glob("files/media/images/scatter_*.png"))
