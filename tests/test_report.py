"""The sweep report on synthetic sweeps with known scores and accuracies: Spearman ρ by hand, picks,
ranks and regrets, failed jobs counted and left out, the auto line, the plain pivot (daqkd/report.py)."""
import csv
import json

import pytest

from daqkd.report import Setting, main, settings_of, spearman


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = [0,1,2,3], y = [1,0,3,2]: d² = 1+1+1+1 = 4, ρ = 1 − 6·4/(4·15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    # ties get the average rank: x ranks [0.5, 0.5, 2], y ranks [0, 1, 2]: Pearson of the ranks = √3/2
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(3**0.5 / 2)


def score(name, m, variance=0.1, student_m=0.0):
    return {"name": name, "m": m, "dev": 0.5 + m, "cmi": 0.5, "variance": variance, "entropy": 0.3, "teacher_acc": 0.8,
            "teacher_ce": 0.5, "num_samples": 100, "seconds": 1.0, "student_m": student_m}


def fake_run(folder, augment, seed, acc, m=0.0, variance=0.1, quantizer="ewgs", bits=2, selected=None, pool=(), config=None, commit=None):
    folder.mkdir(parents=True)
    selected = selected or augment
    scores = [score(n, v) for n, v in pool] if pool else [score(augment, m, variance)]
    (folder / "results.json").write_text(json.dumps({
        "status": "ok",
        "selected_augment": selected,
        "augment_scores": scores,
        "teacher": {"test_acc": 0.9},
        "student": {"test_acc": acc, "quantizer": quantizer, "bits_w": bits, "bits_a": bits, "kd": "kd"},
        **({"provenance": {"git_commit": commit}} if commit else {}),
        "config": {"seed": seed, "augment": {"name": augment, "pool": ["a", "b", "c"]}, "kd": {"name": "kd", "alpha": 2.0},
                   "dataset": {"name": "fashion_mnist"}, "model": {"name": "resnet20"}, "metric": {"seed": seed},
                   "trainer": {"max_epochs": 2}, "paths": {"output_dir": str(folder)}, **(config or {})},
    }))


# Three DAs × two seeds. Mean accuracies: c 0.85, b 0.80, a 0.70. M (mean over seeds): a 0.3, b 0.1, c -0.2:
# M ranks the DAs exactly (ρ = −1). The variance selector ranks them backwards (ρ = +1) and picks a.
GRID = [("a", 0, 0.69, 0.30, 0.05), ("a", 1, 0.71, 0.30, 0.05), ("b", 0, 0.79, 0.12, 0.10), ("b", 1, 0.81, 0.08, 0.10),
        ("c", 0, 0.84, -0.2, 0.20), ("c", 1, 0.86, -0.2, 0.20)]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, (da, seed, acc, m, var) in enumerate(GRID):
        fake_run(root / str(i), da, seed, acc, m, var)
    fake_run(root / "6", "auto", 0, 0.845, selected="c", pool=[("a", 0.3), ("b", 0.1), ("c", -0.2)])
    (root / "7").mkdir()
    (root / "7" / "results.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom", "config": {}}))
    return root


def test_selector_table_picks_ranks_and_regrets(sweep):
    from daqkd.report import load_results

    runs, failed = load_results([sweep])
    assert len(runs) == 7 and len(failed) == 1
    (st,) = settings_of(runs)
    assert isinstance(st, Setting) and st.das == ["c", "b", "a"]  # by mean accuracy
    assert st.mean_acc("b") == pytest.approx(80.0)
    m = st.selector_row("m")
    assert m.rho.rho == pytest.approx(-1.0) and m.pick == "c" and m.rank == 1 and m.regret == pytest.approx(0.0)
    assert m.rho.p == pytest.approx(2 / 6) and m.rho.exact  # 3 DAs: 2 of the 6 orderings are as extreme as a perfect order
    assert m.rho.per_seed == {0: pytest.approx(-1.0), 1: pytest.approx(-1.0)} and m.rho.bootstrap is None  # 2 seeds: no bootstrap
    v = st.selector_row("variance")
    assert v.rho.rho == pytest.approx(1.0) and v.pick == "a" and v.rank == 3
    assert v.regret == pytest.approx(85.0 - 70.0)
    # Paired by seed: b − a is +10 points on both seeds; with 2 seeds the sign-flip p is never below 0.5.
    ba = st.versus("b", "a")
    assert (ba.mean, ba.se, ba.n, ba.p) == (pytest.approx(10.0), pytest.approx(0.0), 2, pytest.approx(0.5))
    sp = st.spread()  # 2 seeds × 3 DAs: seed 1 is seed 0 + 2 points for every DA, so all of it is offset and effect
    assert sp.seed_sd == pytest.approx(2**0.5) and sp.da_sd == pytest.approx(7.6376, rel=1e-3)  # std of 85, 80, 70
    assert sp.residual_sd == pytest.approx(0.0, abs=1e-9)


def test_report_files_count_failures_and_name_the_auto_run(sweep, capsys):
    assert main([str(sweep), "--rows", "augment", "--cols", "bits"]) == 0
    out = capsys.readouterr().out
    assert "7 runs in 1 setting, 1 failed and left out" in out and "RuntimeError: boom" in out
    assert "| m | -1.00 (p 0.33) |" in out and "| variance | +1.00 (p 0.33) |" in out
    # the real auto run (seed 0 only) picked c: against minimal there is none, against the best fixed DA c paired on seed 0
    assert "| augment=auto | c ×1 | 84.50 (n=1) | – | c: +0.50 (n=1: no SE, no p) |" in out  # 84.5 − c's 84.0 on seed 0
    assert "| a | 70.00 ± 1.41 (n=2) |" in out  # the pivot: augment × bits
    assert "seed offsets SD 1.41, DA effects SD 7.64, residual SD 0.00 points" in out
    assert "Commits: unknown ×7." in out and "recorded no commit" in out
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert {r["selector"] for r in rows} >= {"m", "variance"}
    p = {r["selector"]: float(r["p"]) for r in rows if r["selector"] in ("m", "variance")}
    assert p == {"m": pytest.approx(1 / 3), "variance": pytest.approx(1 / 3)}
    paired_rows = list(csv.DictReader(open(sweep / "paired.csv")))  # no minimal in this sweep: auto against its best fixed DA only
    assert [(r["da"].split(" ")[0], r["vs"], r["n"]) for r in paired_rows] == [("augment=auto", "minimal", "0"), ("augment=auto", "c", "1")]
    assert (sweep / "report.md").read_text().startswith("# Sweep report")
    assert (sweep / "scatter.png").stat().st_size > 1000


def test_report_says_when_nothing_is_there(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no finished results.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing is not a folder" in err[0] and "multirun" in err[0]


def test_settings_differ_in_any_config_key_and_duplicates_are_refused(tmp_path, capsys):
    # 16 runs: 2 DAs × 2 seeds × (2 or 8 epochs) × kd.alpha (1 or 2). Keyed on (dataset, model,
    # quantizer, bits, kd name) they collapsed into one setting and the last file read won.
    root = tmp_path / "sw"
    i = 0
    for epochs in (2, 8):
        for alpha in (1.0, 2.0):
            for da in ("a", "b"):
                for seed in (0, 1):
                    acc = 0.5 + 0.1 * (epochs == 8) + 0.01 * alpha + 0.001 * (da == "b") + 0.0001 * seed
                    fake_run(root / str(i), da, seed, acc, config={"trainer": {"max_epochs": epochs}, "kd": {"name": "kd", "alpha": alpha}})
                    i += 1
    from daqkd.report import load_results

    runs, _ = load_results([root])
    settings = settings_of(runs)
    assert len(settings) == 4 and all(len(v) == 2 for st in settings for v in st.acc.values())
    names = {st.name for st in settings}
    assert "fashion_mnist / resnet20 / ewgs / W2A2 / kd · kd.alpha=1.0, trainer.max_epochs=8" in names
    st = next(st for st in settings if st.config["trainer.max_epochs"] == 8 and st.config["kd.alpha"] == 1.0)
    assert st.acc["b"][1] == pytest.approx(100 * (0.5 + 0.1 + 0.01 + 0.001 + 0.0001))
    # the same setting, DA and seed twice: an error naming both folders
    fake_run(root / "dup", "a", 0, 0.9, config={"trainer": {"max_epochs": 2}, "kd": {"name": "kd", "alpha": 1.0}})
    with pytest.raises(SystemExit):
        main([str(root)])
    err = capsys.readouterr().err
    assert "augment=a and seed=0" in err and str(root / "0") in err and str(root / "dup") in err


def test_tied_scores_pick_the_first_da_in_pool_order_as_auto_does(tmp_path):
    # a, b, c all score M = 0.1; c is the most accurate. augment=auto picks the first in the pool (a),
    # so the report must too (it used to pick the most accurate and flattered the regret).
    root = tmp_path / "sw"
    for i, (da, acc) in enumerate((("a", 0.70), ("b", 0.75), ("c", 0.80))):
        fake_run(root / str(i), da, 0, acc, m=0.1)
    from daqkd.metric.scoring import AugmentScore, select_augmentation
    from daqkd.report import load_results

    (st,) = settings_of(load_results([root])[0])
    row = st.selector_row("m")
    assert row.pick == "a" and row.regret == pytest.approx(10.0)
    auto = select_augmentation([AugmentScore.from_dict(score(d, 0.1)) for d in ("a", "b", "c")], "m")
    assert auto == row.pick


def test_the_budget_curve_table_and_figure(tmp_path, capsys):
    # M predicts at 8 epochs (ρ = −1) and backwards at 2 (ρ = +1); three DAs, two seeds.
    root = tmp_path / "sw"
    i = 0
    for epochs, accs in ((2, {"a": 0.80, "b": 0.75, "c": 0.70}), (8, {"a": 0.70, "b": 0.75, "c": 0.80})):
        for da, m in (("a", 0.3), ("b", 0.1), ("c", -0.2)):
            for seed in (0, 1):
                fake_run(root / str(i), da, seed, accs[da] + 0.002 * seed, m=m, config={"trainer": {"max_epochs": epochs}})
                i += 1
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "## Budget curve: fashion_mnist / resnet20 / ewgs / W2A2 / kd" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("| m |") and "ep" not in ln and "·" in ln)
    assert "+1.00 (p 0.33) · 10.00 (c)" in line and "-1.00 (p 0.33) · 0.00 (c)" in line
    assert (root / "budget.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(root / "report.csv")))
    assert {r["epochs"] for r in rows} == {"2", "8"}


def test_fewer_than_three_das_say_why_the_table_is_missing(tmp_path, capsys):
    root = tmp_path / "sw"
    fake_run(root / "0", "a", 0, 0.7, m=0.1)
    fake_run(root / "1", "b", 0, 0.8, m=0.2)
    assert main([str(root)]) == 0
    assert "Selector table left out: a rank correlation needs at least 3 scored DAs, this setting has 2." in capsys.readouterr().out


def test_a_results_file_of_the_first_schema_still_loads(tmp_path):
    """results.json files written before the schema had a version (no schema_version, no selection_how,
    no config_composed) load into the typed result, and the report reads them."""
    from daqkd.result import RunResult

    fake_run(tmp_path / "old", "a", 0, 0.7)
    r = RunResult.load(tmp_path / "old" / "results.json")
    assert r.schema_version == 1 and r.ok and r.student.test_acc == 0.7 and r.selection_how is None
    assert r.augment_scores[0].name == "a" and r.augment_scores[0].ce_cmi != r.augment_scores[0].ce_cmi  # NaN: not recorded
    assert r.teacher.test_acc == 0.9 and r.config["seed"] == 0


def test_a_wrong_pivot_is_one_line(sweep, capsys):
    for argv in (["--rows", "nope"], ["--rows", "augment", "--cols", "student.nope"]):
        with pytest.raises(SystemExit) as e:
            main([str(sweep), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "no such field" in err and len(err.strip().splitlines()) == 1


def test_report_reads_runs_packed_in_tar_gz_and_flags_uncommitted_trees(tmp_path, capsys):
    """Committed grids are packed as results.tar.gz: the report reads them in place (no unpacking), counts
    a run found both packed and unpacked once, and says which runs came from a tree with uncommitted changes."""
    import tarfile

    src = tmp_path / "src"
    for i, (da, seed, acc, m, var) in enumerate(GRID):
        fake_run(src / da / f"seed{seed}", da, seed, acc, m, var, commit="a" * 40 + ("+dirty" if i == 0 else ""))
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / "results.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=".")
    assert main([str(packed)]) == 0
    out = capsys.readouterr().out
    assert "6 runs in 1 setting" in out and "| c | 85.00 ± 1.41 (n=2) |" in out
    assert f"Commits: {'a' * 12} ×5, {'a' * 12}+dirty ×1." in out and "1 of 6 runs came from a tree with uncommitted changes" in out
    # One run also unpacked beside the archive: still 6 runs, not 7.
    fake_run(packed / "a" / "seed0", "a", 0, 0.69, 0.30, 0.05)
    from daqkd.report import load_results

    runs, _ = load_results([packed])
    assert len(runs) == 6 and sum(":" not in r.path for r in runs) == 1
    (packed / "broken.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(SystemExit) as e:
        main([str(packed)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "broken.tar.gz is not a readable tar.gz archive" in err[0]


def test_a_key_that_follows_the_budget_does_not_split_the_budget_curve(tmp_path):
    """budget_fashion_mnist_long validates max_epochs/16 times a run (${daqkd.interval:...}): the
    validation interval differs with the budget, but follows it, so the budgets stay one curve."""
    from daqkd.report import budget_families, load_results

    root = tmp_path / "sw"
    i = 0
    for epochs in (16, 64):
        for da, m in (("a", 0.3), ("b", 0.1), ("c", -0.2)):
            fake_run(root / str(i), da, 0, 0.8, m=m, config={"trainer": {"max_epochs": epochs, "check_val_every_n_epoch": epochs // 16}})
            path = root / str(i) / "results.json"
            data = json.loads(path.read_text())
            data["config_composed"] = {**data["config"], "seed": 0, "trainer": {
                "max_epochs": epochs, "check_val_every_n_epoch": "${daqkd.interval:${trainer.max_epochs},16}"}}
            path.write_text(json.dumps(data))
            i += 1
    (family,) = budget_families(settings_of(load_results([root])[0]))
    assert [st.epochs for st in family] == [16, 64]


def test_a_key_added_later_at_its_neutral_value_is_the_setting_of_runs_without_it(tmp_path):
    """teacher.warmup_epochs came after runs were recorded: runs without it and runs with 0 (what its
    absence meant) are one setting; a warm-up is another. A sweep's relaunch reads it the same way."""
    from daqkd.report import load_results
    from daqkd.rundir import composed, differences

    root = tmp_path / "sw"
    for i, (da, m) in enumerate((("a", 0.3), ("b", 0.1), ("c", -0.2))):
        fake_run(root / f"old{i}", da, 0, 0.8, m=m)
        fake_run(root / f"new{i}", da, 1, 0.8, m=m, config={"teacher": {"warmup_epochs": 0}})
        fake_run(root / f"warm{i}", da, 0, 0.8, m=m, config={"teacher": {"warmup_epochs": 0.5}})
    settings = settings_of(load_results([root])[0])
    assert sorted(len(st.runs) for st in settings) == [3, 6]
    old, new = ({"teacher": {"lr": 0.1}}, {"teacher": {"lr": 0.1, "warmup_epochs": 0}})
    assert differences(composed(old), composed(new)) == []
    assert differences(composed(old), composed({"teacher": {"lr": 0.1, "warmup_epochs": 0.5}})) == ["teacher.warmup_epochs"]
