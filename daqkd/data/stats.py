"""``python -m daqkd.data.stats dataset=NAME [overrides]``: per-channel mean and std of a data
set's training split, printed as YAML to paste into conf/dataset/NAME.yaml."""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from daqkd.config import config_dir, normalize_overrides
from daqkd.errors import reported_as_one_line


def channel_stats(datamodule, max_images: int | None = None) -> tuple[list[float], list[float]]:
    """Mean and std per channel over the training split (pixels scaled to [0, 1]), in float64."""
    datamodule.setup()
    idx = datamodule.train_idx if max_images is None else datamodule.train_idx[:max_images]
    total = total_sq = None
    n = 0
    for j in idx.tolist():
        x = datamodule.train_set.image(j).double().div_(255).flatten(1)
        s, sq = x.sum(1), x.pow(2).sum(1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        n += x.shape[1]
    mean = total / n
    std = (total_sq / n - mean.pow(2)).clamp_min(0).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def main(argv: list[str]) -> int:
    overrides = normalize_overrides(argv) + ["paths.output_dir=."]
    with reported_as_one_line():
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        # The statistics are what this computes: the config's own (maybe for another channel count) are not needed.
        c = cfg.dataset.in_channels
        cfg.dataset.datamodule.mean, cfg.dataset.datamodule.std = [0.0] * c, [1.0] * c
        dm = instantiate(cfg.dataset.datamodule)
        mean, std = channel_stats(dm)
    print(f"# {cfg.dataset.name}: {len(dm.train_idx)} training images, {c} channel(s); paste into conf/dataset/{cfg.dataset.name}.yaml"
          f"\ndataset:\n  datamodule:\n    mean: {mean}\n    std: {std}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
