"""``python -m daqkd.stats dataset=NAME [overrides]``: per-channel mean and std of a data set's
training split, printed as YAML to paste into conf/dataset/NAME.yaml."""
from __future__ import annotations

import sys

from hydra.utils import instantiate

from daqkd.config import check_command_line, compose_config
from daqkd.data.stats import channel_stats
from daqkd.errors import reported_as_one_line


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    overrides = [*argv, "paths.output_dir=."]
    with reported_as_one_line():
        check_command_line(overrides, validate=False)  # the overrides of python -m daqkd.run (the mean and std are what this computes)
        cfg = compose_config(overrides)
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
