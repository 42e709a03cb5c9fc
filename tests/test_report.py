"""The sweep report (daqkd/report.py)."""
import json

import pytest

from daqkd.report import main, spearman


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = [0,1,2,3], y = [1,0,3,2]: d² = 1+1+1+1 = 4, ρ = 1 − 6·4/(4·15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)

def fake_run(folder, quantizer, bits, seed, acc, augment="minimal", m=0.0):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "selected_augment": augment,
        "augment_scores": [{"name": augment, "m": m}],
        "teacher": {"test_acc": 0.9},
        "student": {"test_acc": acc, "quantizer": quantizer, "bits_w": bits, "bits_a": bits, "kd": "kd"},
        "config": {"seed": seed, "augment": {"name": augment}, "kd": {"name": "kd"},
                   "dataset": {"name": "fashion_mnist"}, "model": {"name": "resnet20"}},
    }))

def test_report_pivots_means_and_correlation(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", "ewgs", 2, 0, 0.80, "minimal", m=0.3)
    fake_run(sweep / "1", "ewgs", 2, 1, 0.82, "augmix", m=0.1)
    fake_run(sweep / "2", "pact", 4, 0, 0.85, "trivialaugment", m=-0.2)
    assert main([str(sweep), "--rows", "quantizer", "--cols", "bits"]) == 0
    out = capsys.readouterr().out
    assert "| ewgs | 81.00 ± 1.41 (n=2) | – |" in out
    assert "| pact | – | 85.00 |" in out
    assert "Spearman ρ(M, test accuracy) over 3 fixed-DA runs: -1.000" in out
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").read_text().startswith("quantizer,bits,mean")

def test_report_says_when_nothing_is_there(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    with pytest.raises(FileNotFoundError, match="multirun"):
        main([str(tmp_path / "missing")])
