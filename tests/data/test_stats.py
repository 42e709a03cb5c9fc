"""Per-channel statistics against numpy (daqkd/data/stats.py)."""
import pytest
from fakedata import write_image


def make_folder(root, with_val=True, per_class=6):
    for c in ("cat", "dog", "owl"):
        for k in range(per_class):
            write_image(root / "train" / c / f"{k}.png", size=40, seed=hash((c, k)) % 1000)
        if with_val:
            for k in range(2):
                write_image(root / "val" / c / f"v{k}.png", size=40, seed=500 + k)

def test_channel_stats_match_numpy(tmp_path, make_datamodule):
    import numpy as np

    from daqkd.data.stats import channel_stats

    make_folder(tmp_path, per_class=4)
    dm = make_datamodule("imagefolder", tmp_path, 3, 3, 40, val_size=3, source_options={"folder": str(tmp_path), "image_size": 40})
    mean, std = channel_stats(dm)
    pixels = np.stack([dm.train_set.image(int(j)).numpy() for j in dm.train_idx]).astype(np.float64) / 255
    assert mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-4)
    assert std == pytest.approx(pixels.std((0, 2, 3)).tolist(), abs=1e-4)
