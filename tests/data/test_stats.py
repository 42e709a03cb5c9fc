"""Per-channel statistics against numpy (daqkd/data/stats.py)."""
import pytest
from fakedata import make_folder, write_image


def test_channel_stats_match_numpy(tmp_path, make_datamodule):
    import numpy as np

    from daqkd.data.stats import channel_stats

    make_folder(tmp_path, per_class=4)
    dm = make_datamodule("imagefolder", tmp_path, 3, 3, 40, val_size=3, source_options={"folder": str(tmp_path), "image_size": 40})
    mean, std = channel_stats(dm)
    pixels = np.stack([dm.train_set.image(int(j)).numpy() for j in dm.train_idx]).astype(np.float64) / 255
    assert mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-4)
    assert std == pytest.approx(pixels.std((0, 2, 3)).tolist(), abs=1e-4)


def test_the_stats_command_computes_what_it_is_asked_for_on_a_grey_folder(tmp_path, capsys):

    from daqkd.stats import main

    for i, c in enumerate(("a", "b")):
        for k in range(5):
            write_image(tmp_path / "imgs" / "train" / c / f"{k}.png", size=16, seed=10 * i + k, grey=True)
    # No mean or std given: the config's 3-channel ImageNet values must not stand in the way.
    assert main(["dataset=imagefolder", "dataset.num_classes=2", "dataset.in_channels=1", "dataset.image_size=16",
                 "dataset.datamodule.val_size=2", f"dataset.datamodule.source_options.folder={tmp_path}/imgs",
                 f"paths.root_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    mean = [float(v) for v in out.split("mean: [")[1].split("]")[0].split(",")]
    assert len(mean) == 1 and 0.3 < mean[0] < 0.7  # one channel of uniform random pixels
