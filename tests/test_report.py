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


def fake_run(folder, augment, seed, acc, m=0.0, variance=0.1, quantizer="ewgs", bits=2, selected=None, pool=()):
    folder.mkdir(parents=True)
    selected = selected or augment
    scores = [score(n, v) for n, v in pool] if pool else [score(augment, m, variance)]
    (folder / "results.json").write_text(json.dumps({
        "status": "ok",
        "selected_augment": selected,
        "augment_scores": scores,
        "teacher": {"test_acc": 0.9},
        "student": {"test_acc": acc, "quantizer": quantizer, "bits_w": bits, "bits_a": bits, "kd": "kd"},
        "config": {"seed": seed, "augment": {"name": augment}, "kd": {"name": "kd"},
                   "dataset": {"name": "fashion_mnist"}, "model": {"name": "resnet20"}},
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
    assert m["rho"] == pytest.approx(-1.0) and m["pick"] == "c" and m["rank"] == 1 and m["regret"] == pytest.approx(0.0)
    v = st.selector_row("variance")
    assert v["rho"] == pytest.approx(1.0) and v["pick"] == "a" and v["rank"] == 3
    assert v["regret"] == pytest.approx(85.0 - 70.0)
    assert m["lo"] <= m["rho"] <= m["hi"]  # the bootstrap interval holds the point estimate
    within, between = st.spreads()
    assert within == pytest.approx(2**0.5)  # every DA: stdev of (x − 1, x + 1) points
    assert between == pytest.approx(7.6376, rel=1e-3)  # std of 85, 80, 70


def test_report_files_count_failures_and_name_the_auto_run(sweep, capsys):
    assert main([str(sweep), "--rows", "augment", "--cols", "bits"]) == 0
    out = capsys.readouterr().out
    assert "7 runs, 1 failed and left out" in out and "RuntimeError: boom" in out
    assert "| m | -1.000 |" in out and "| variance | +1.000 |" in out
    assert "auto (c): 84.50; best fixed c 85.00, worst fixed a 70.00" in out
    assert "| a | 70.00 ± 1.41 (n=2) |" in out  # the pivot: augment × bits
    assert "is smaller than the spread between DAs" in out
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    assert {r["selector"] for r in rows} >= {"m", "variance"}
    assert (sweep / "report.md").read_text().startswith("# Sweep report")
    assert (sweep / "scatter.png").stat().st_size > 1000


def test_report_says_when_nothing_is_there(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    with pytest.raises(FileNotFoundError, match="multirun"):
        main([str(tmp_path / "missing")])
