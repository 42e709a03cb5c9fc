"""``python -m daqkd.score [group=option ...]``: rank a pool of DAs without training a student.

The same config groups and teacher resolution as ``python -m daqkd.run``: the teacher comes from
``teacher.ckpt``, the cache or training; the student is built and calibrated exactly as a run
builds it (for ``student_m``). Every candidate of ``augment.pool`` (``pool=paper`` or
``pool=reference16``; with ``augment=<name>``, that one DA) is scored with every selector, on the
same images. Prints the ranking by ``metric.selector`` and writes ``scores.csv`` and
``scores.json`` into the output folder (``outputs/score/<date_time>/``).
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from daqkd.build import build_datamodule, build_device, build_student, build_teacher
from daqkd.config import check_command_line, config_dir, normalize_overrides, validate_config
from daqkd.errors import reported_as_one_line
from daqkd.io import atomic_write_json
from daqkd.metric import format_ranking, score_augmentations
from daqkd.metric.select import SCORE_FIELDS, decide, rule_from_config
from daqkd.torchutil import set_threads

log = logging.getLogger("daqkd")


def score(cfg: DictConfig) -> dict:
    """Score the pool; returns what it writes to scores.json."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.speed.get("threads", "auto"), cfg.dataset.datamodule.num_workers)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    teacher = build_teacher(cfg, datamodule)
    L.seed_everything(cfg.seed, workers=True)
    student = build_student(cfg, teacher.model, datamodule)
    candidates = list(cfg.augment.pool) if cfg.augment.name == "auto" else [cfg.augment.name]
    m, device = cfg.metric, build_device(cfg)
    scores = score_augmentations(teacher.model.to(device), datamodule, candidates, m.num_samples, m.batch_size, m.seed,
                                 device, student.to(device))
    rule = rule_from_config(m)
    decision = decide(scores, rule, cfg.trainer.get("max_epochs"))
    best = decision.selected
    print(format_ranking(scores, best, decision.selector, decision.tied, decision.how))
    with open(output_dir / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCORE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(s.as_dict() for s in scores)
    result = {
        "selector": decision.selector,
        "best": best,
        "how": decision.how,
        "scores": [s.as_dict() for s in scores],
        "teacher": {"ckpt": teacher.ckpt, "test_acc": teacher.test_acc, "source": teacher.source},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(output_dir / "scores.json", result)
    log.info("Scored %d DAs; best by %s: %s | %s", len(scores), decision.selector, best, output_dir / "scores.json")
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    with reported_as_one_line():
        score(cfg)


def main() -> None:
    with reported_as_one_line():  # refused before Hydra makes a folder, as python -m daqkd.run does
        check_command_line(sys.argv[1:])
    sys.argv[1:] = normalize_overrides(sys.argv[1:]) + ["task_name=score"]
    hydra_main()


if __name__ == "__main__":
    main()
