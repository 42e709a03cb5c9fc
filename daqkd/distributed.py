"""Several processes (Lightning's DDP strategies): what daqkd adds to Lightning's handling of them."""
from __future__ import annotations

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


class SpawnedRankTeardown(L.Callback):
    """For ``strategy=ddp_spawn``: at the end of each stage, in each spawned rank, every rank meets at
    a barrier and then destroys its process group while the interpreter is fully alive. Otherwise the
    group is destroyed at interpreter exit (Lightning's atexit hook), and a rank that gets there while
    gloo's threads still hold work of a peer that is behind (a busy machine) can die with SIGABRT
    (``terminate called without an active exception``), as a rank of tests/test_distributed.py did
    once under load. With ``strategy=ddp`` the ranks keep one group from the fit to the test, and
    this does nothing."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        launcher = getattr(trainer.strategy, "launcher", None)
        if trainer.world_size > 1 and isinstance(launcher, _MultiProcessingLauncher) and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
