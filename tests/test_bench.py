"""`make bench` runs end to end and writes the figures it promises (daqkd/bench.py)."""
import json

import pytest

from daqkd import bench


@pytest.mark.slow
def test_quick_bench_writes_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no cached teacher here: the stability part uses a random teacher
    monkeypatch.setenv("DAQKD_ROOT", str(tmp_path))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["qat_step"]["fused_ms"] > 0 and data["qat_step"]["speedup_fused_vs_reference"] > 0
    assert set(data["augment"]) >= {"minimal", "augmix", "cutmix", "trivialaugment"}
    assert data["augment"]["minimal"]["relative_to_minimal"] == pytest.approx(1.0)
    assert set(data["ranking_stability_spearman_vs_largest"]) == {"100", "200"}
    assert data["ranking_stability_spearman_vs_largest"]["200"] == pytest.approx(1.0)
