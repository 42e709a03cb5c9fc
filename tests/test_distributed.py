"""Several processes: DDP on the CPU (ddp_spawn, 2 processes, gloo) trains with one DA and one δ on
every rank and writes one results.json (daqkd/metric/callback.py, daqkd/quant/callback.py, daqkd/run.py)."""
import json

import lightning as L
import pytest
import torch

from daqkd import run
from daqkd.quant import EWGSQuantizer

pytestmark = pytest.mark.slow


class PerRank(L.Callback):
    """Writes what each rank trains with: its DA, its first batch and its δ after the epoch's estimate."""

    def __init__(self, folder):
        self.folder = str(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            deltas = {n: float(q.delta) for n, q in pl_module.student.named_modules() if isinstance(q, EWGSQuantizer)}
            record = {"rank": trainer.global_rank, "world": trainer.world_size, "augment": trainer.datamodule.train_augment,
                      "deltas": deltas, "targets_shape": list(batch[1].shape)}
            with open(f"{self.folder}/rank{trainer.global_rank}.json", "w") as f:
                json.dump(record, f)


def test_ddp_spawn_on_the_cpu_agrees_across_ranks(make_cfg, tmp_path):
    cfg = make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn",
                   "augment.pool=[minimal,cutmix,trivialaugment]", "kd=crd", "kd.method.bank_size=64",
                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "dataset.datamodule.test_subset=64")
    results = run.train(cfg, extra_callbacks=[PerRank(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["augment"] == ranks[1]["augment"] == results.selected_augment  # one DA, decided on rank 0
    assert ranks[0]["deltas"] == ranks[1]["deltas"] and any(v != 1e-3 for v in ranks[0]["deltas"].values())  # one δ
    assert len(list((tmp_path / "out").rglob("results.json"))) == 1
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(state["distiller.method.bank_ptr"]) == (2 * 2 * 64) % 64  # 2 steps × 2 ranks × 64 images gathered
