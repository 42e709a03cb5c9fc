"""`make bench` runs end to end and writes every figure it promises, each with its limit, ratio and
target (no timing assertions here: speed targets live in the benchmark, not in tests) (daqkd/bench/)."""
import json

import pytest
from conftest import TEST_MODEL

from daqkd import bench


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no cached teacher here: a random one stands in
    monkeypatch.setenv("DAQKD_ROOT", str(tmp_path))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--out", str(out), TEST_MODEL, "dataset.datamodule.train_subset=1000", "metric.batch_size=50"]) == 0
    data = json.loads(out.read_text())
    step = data["qat_step"]["configured"]
    assert step["qat_ms"] > 0 and step["limit_ms"] > 0 and step["efficiency"] == pytest.approx(step["limit_ms"] / step["qat_ms"])
    assert data["fused_ewgs"]["speedup"] > 0
    sc = data["scoring"]
    assert sc["pool_seconds"] > 0 and 0 < sc["share_of_default_run"] < 1 and set(sc["per_candidate"]) == set(sc["pool"])
    assert all(c["efficiency"] > 0 for c in sc["per_candidate"].values())
    boot = sc["bootstrap"]
    assert boot["classes"] == 200 and boot["hard_seconds"] > 0 and boot["speedup"] == pytest.approx(boot["general_seconds"] / boot["hard_seconds"])
    d = data["ewgs_delta"]
    assert d["seconds"] > 0 and d["estimates_in_default_run"] >= 1 and d["relative_standard_error"] >= 0
    assert all(p["images_per_s"] > 0 and p["ratio"] > 0 for p in data["pipeline"].values())
    assert data["memory"]["bench_peak_rss_mb"] > 100
    c = data["contention"]
    assert c["auto"]["threads"] == max(1, c["cores"] - c["loader_workers"]) and c["auto"]["idle_steps_per_s"] > 0
    a = data["adaptive_scoring"]
    assert a["total"] == 1 and a["cases"][0]["full_pick"] in a["cases"][0]["images_used"] and a["rounds_seconds"] > 0
    assert all(0 < v <= 200 for v in a["cases"][0]["images_used"].values())
    assert data["compiled_step"]["ewgs"]["qat_ms"] > 0 and data["compiled_step"]["ewgs"]["backend"] == "eager"
    figures = {row["figure"] for row in data["table"]}
    assert any(f.startswith("QAT+KD step") for f in figures) and any(f.startswith("DA scoring") for f in figures)
    assert all({"value", "limit", "ratio", "target", "met"} <= set(row) for row in data["table"])
    printed = capsys.readouterr().out
    assert "| figure" in printed and "| met |" in printed


@pytest.mark.slow
def test_export_bench_measures_every_form(tmp_path, monkeypatch, capsys):
    from daqkd import bench_export

    monkeypatch.setattr(bench_export, "MODELS", (("resnet8", 8, 1),))  # tiny: the figures, not their size
    monkeypatch.setattr(bench_export, "CALIBRATION", 8)
    out = tmp_path / "export.json"
    assert bench_export.main(["--quick", "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["models"]["resnet8@8"]
    fp = entry["teacher_fp"]
    for bits in ("W8A8", "W4A4", "W2A2"):
        e = entry[bits]
        assert e["quantized_convs"] == 6  # ResNet-8: 7 convs, the first in full precision
        assert e["int8_ops"].get("QLinearConv", 0) >= 1  # the integer kernels ran (the first conv stays FP)
        for form in ("exact", "int8"):
            assert e["throughput_vs_teacher"][form] == pytest.approx(e[form]["throughput_b64_img_s"] / fp["throughput_b64_img_s"])
        assert e["bytes"]["student_weights.npz"] < e["bytes"]["student_int.pt"]  # packed below one byte a weight
    # 2-bit weights pack four to a byte: the npz is smaller than at 8 bits
    assert entry["W2A2"]["bytes"]["student_weights.npz"] < entry["W8A8"]["bytes"]["student_weights.npz"]
    assert "| resnet8@8 | W2A2 int8 |" in capsys.readouterr().out


def test_a_figure_checks_only_the_targets_it_declares():
    from daqkd.bench import figures
    from daqkd.bench.core import Setup

    setup = object.__new__(Setup)  # the rows only: no data or teacher needed
    setup.rows, setup.figure = [], next(f for f in figures() if f.key == "pipeline")
    setup.check("data pipeline, minimal", 300.0, 100.0, 3.0, "pipeline_vs_step", "img/s")
    setup.check("data pipeline, augmix", 150.0, 100.0, 1.5, "pipeline_vs_step", "img/s")
    assert [(r["target"], r["met"]) for r in setup.rows] == [("≥ 2", True), ("≥ 2", False)]
    with pytest.raises(KeyError, match="without declaring"):
        setup.check("training with one busy process", 1.0, 1.0, 1.0, "busy_machine")


def test_a_bad_override_or_flag_is_one_line_before_any_work(capsys):
    for argv, words in ((["metric.tie_z=-1"], "metric.tie_z=-1 is not allowed: expected a number ≥ 0"),
                        (["bits=5"], "bits=5 is not an option of bits"),
                        (["--quik"], "unrecognized arguments: --quik")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--out", "/nonexistent/bench.json", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and len(err.strip().splitlines()) <= 2, err  # argparse adds its usage line
