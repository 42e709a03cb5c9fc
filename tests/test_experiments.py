"""Every paper experiment composes; every *_cpu variant runs one epoch on generated data."""
import json

import lightning as L
import pytest

import daqkd.run as run
from daqkd.config import config_dir, validate_config
from daqkd.quant import quant_layers
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
    probe = TrainingProbe()
    results = run.train(cfg, extra_callbacks=[probe])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["student"]["epochs"] == 1 and len(saved["augment_scores"]) == 2
    # What the fit did: batches of the experiment's data set, a student of its bit width, weights that moved.
    size = cfg.dataset.image_size
    assert probe.shape[1:] == (3, size, size) and probe.shape[0] == cfg.dataset.datamodule.batch_size
    assert probe.bits == (cfg.bits.w, cfg.bits.a) and probe.moved > 0
    assert results["config"]["model"]["name"] in name


class TrainingProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        name, layer = list(quant_layers(pl_module.student))[1]  # an inner layer (first/last may be 8-bit)
        self.layer, self.start = layer, layer.weight.detach().clone()
        self.bits = (layer.weight_quantizer.bits, layer.act_quantizer.bits)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.__dict__.setdefault("shape", tuple(batch[0].shape))

    def on_train_end(self, trainer, pl_module):
        self.moved = float((self.layer.weight.detach() - self.start).abs().max())
