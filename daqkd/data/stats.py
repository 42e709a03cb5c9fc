"""Per-channel mean and std of a data set's training split (``channel_stats``; the command that
prints them is ``python -m daqkd.stats``)."""
from __future__ import annotations


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

