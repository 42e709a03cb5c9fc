"""Every paper experiment composes, and runs one epoch with debug=cpu on generated data (conf/experiment/)."""
import json

import lightning as L
import pytest
from fakedata import make_tiny_imagenet, write_cifar

from daqkd import run
from daqkd.config import config_dir, validate_config
from daqkd.quant import quant_layers

PAPER = sorted(p.stem for p in (config_dir() / "experiment").glob("paper_*.yaml"))


def test_debug_cpu_scales_any_experiment_down(make_cfg):
    assert len(PAPER) >= 3
    for name in PAPER:
        full, cpu = make_cfg(f"experiment={name}", fast=False), make_cfg(f"experiment={name}", "debug=cpu", fast=False)
        assert full.trainer.accelerator == "gpu" and cpu.trainer.accelerator == "cpu"
        assert cpu.trainer.max_epochs == 1 and cpu.teacher.max_epochs == 1 and cpu.dataset.datamodule.train_subset == 2000
        # Everything that defines the setting is the experiment's.
        for key in ("dataset", "model", "quantizer", "bits", "kd", "augment", "optim"):
            assert cpu[key] == full[key] or key == "dataset", key
        assert cpu.dataset.name == full.dataset.name and cpu.dataset.datamodule.mean == full.dataset.datamodule.mean


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
def test_each_experiment_runs_with_debug_cpu(make_cfg, tmp_path, fake_data, name):
    # The generated sets are tiny, so the split sizes shrink to fit; everything else is the experiment.
    cfg = make_cfg(
        f"experiment={name}", "debug=cpu", f"paths.data_dir={fake_data}", "dataset.datamodule.val_size=40",
        "dataset.datamodule.train_subset=null", "dataset.datamodule.test_subset=null", "metric.num_samples=null",
        "augment.pool=[minimal,cutmix]", "metric.score_student=false",  # the student's passes: tests/metric/
        "dataset.datamodule.num_workers=0", "trainer.enable_progress_bar=false", "trainer.limit_train_batches=2",
        "teacher.limit_train_batches=2", "quantizer.calibration_size=32", fast=False,
    )
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.accelerator == "cpu"
    if cfg.quantizer.callback is not None:  # one probe on one batch: δ's estimator is tested in quant/
        cfg.quantizer.callback.num_batches, cfg.quantizer.callback.probes = 1, 1
    probe = TrainingProbe()
    results = run.train(cfg, extra_callbacks=[probe])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["student"]["epochs"] == 1 and len(saved["augment_scores"]) == 2
    # What the fit did: batches of the experiment's data set, a student of its bit width, weights that moved.
    size = cfg.dataset.image_size
    assert probe.shape[1:] == (3, size, size) and probe.shape[0] == cfg.dataset.datamodule.batch_size
    assert probe.bits == (cfg.bits.w, cfg.bits.a) and probe.moved > 0
    assert results.config["model"]["name"] in name

class TrainingProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        name, layer = list(quant_layers(pl_module.student))[1]  # an inner layer (first/last may be 8-bit)
        self.layer, self.start = layer, layer.weight.detach().clone()
        self.bits = (layer.weight_quantizer.bits, layer.act_quantizer.bits)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.__dict__.setdefault("shape", tuple(batch[0].shape))

    def on_train_end(self, trainer, pl_module):
        self.moved = float((self.layer.weight.detach() - self.start).abs().max())
