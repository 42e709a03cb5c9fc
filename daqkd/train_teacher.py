"""``python -m daqkd.train_teacher [overrides]``: resolve the FP teacher alone (train and cache it,
or find it in the cache), with the same config groups as ``python -m daqkd.run``."""
from __future__ import annotations

import logging
import sys

import hydra
import lightning as L
from omegaconf import DictConfig

from daqkd.build import build_datamodule, build_teacher
from daqkd.config import check_command_line, config_dir, normalize_overrides, validate_config
from daqkd.errors import reported_as_one_line
from daqkd.torchutil import set_threads

log = logging.getLogger("daqkd")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    with reported_as_one_line():
        validate_config(cfg)
        set_threads(cfg.speed.get("threads", "auto"), cfg.dataset.datamodule.num_workers)
        L.seed_everything(cfg.seed, workers=True)
        info = build_teacher(cfg, build_datamodule(cfg))
    log.info("Teacher %s/%s (%s): %s, test accuracy %.4f", cfg.dataset.name, cfg.model.name, info.source, info.ckpt, info.test_acc)
    return info.test_acc


def main() -> None:
    with reported_as_one_line():  # refused before Hydra makes a folder, as python -m daqkd.run does
        check_command_line(sys.argv[1:])
    sys.argv[1:] = normalize_overrides(sys.argv[1:]) + ["task_name=teacher"]
    hydra_main()


if __name__ == "__main__":
    main()
