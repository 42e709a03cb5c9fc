"""Every paper experiment composes; every *_cpu variant runs one epoch on generated data."""
import json

import pytest

import daqkd.run as run
from daqkd.config import config_dir, validate_config
from fakedata import make_tiny_imagenet, write_cifar

PAPER = sorted(p.stem for p in (config_dir() / "experiment").glob("paper_*.yaml") if not p.stem.endswith("_cpu"))


def test_each_paper_setting_has_a_cpu_variant():
    assert len(PAPER) >= 3
    for name in PAPER:
        assert (config_dir() / "experiment" / f"{name}_cpu.yaml").is_file()


@pytest.mark.parametrize("name", PAPER)
def test_paper_experiment_composes(make_cfg, name):
    cfg = make_cfg(f"experiment={name}", fast=False)
    validate_config(cfg)
    assert cfg.trainer.max_epochs >= 100 and cfg.augment.name == "auto" and cfg.kd.name == "kd"
    assert (cfg.quantizer.name in name or cfg.quantizer.name == "ewgs") and f"w{cfg.bits.w}a{cfg.bits.a}" in name
    assert cfg.model.name in name and (cfg.dataset.name in name or "tiny" in name)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paperdata")
    write_cifar(root, "cifar10", n_per_file=40)  # 200 train / 40 test
    write_cifar(root, "cifar100", n_per_file=200)  # 200 train / 200 test (2 per class)
    make_tiny_imagenet(root, classes=200, per_class=2, val=50)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_cpu_variant_runs_one_epoch(make_cfg, tmp_path, fake_data, name):
    # The generated sets are tiny, so the split sizes shrink to fit; everything else is the experiment.
    cfg = make_cfg(
        f"experiment={name}_cpu", f"paths.data_dir={fake_data}", "dataset.datamodule.val_size=40",
        "dataset.datamodule.train_subset=null", "dataset.datamodule.test_subset=null", "metric.num_samples=null",
        "augment.pool=[minimal,cutmix]",
        "dataset.datamodule.num_workers=0", "trainer.enable_progress_bar=false", fast=False,
    )
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.accelerator == "cpu"
    results = run.train(cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["student"]["epochs"] == 1 and 0 <= saved["student"]["test_acc"] <= 1
    assert len(saved["augment_scores"]) == 2 and results["config"]["model"]["name"] in name
