"""Tiny-ImageNet and ImageFolder readers on small trees written in the real layouts (daqkd/data/files.py)."""
import logging

import pytest
import torch
from fakedata import make_folder, make_tiny_imagenet

from daqkd.data import load_image_sets
from daqkd.data.files import LayoutError


def test_tiny_imagenet_layout_labels_and_counts(tmp_path):
    make_tiny_imagenet(tmp_path)
    train, test = load_image_sets("tinyimagenet", tmp_path)
    assert len(train) == 12 and len(test) == 8
    assert train.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert test.targets.tolist() == [(k * 3) % 4 for k in range(8)]  # from val_annotations.txt
    img = test.image(0)
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8

def test_tiny_imagenet_errors_name_path_and_layout(tmp_path):
    with pytest.raises(LayoutError, match=r"tiny-imagenet-200.*val_annotations.txt"):
        load_image_sets("tinyimagenet", tmp_path)
    make_tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(LayoutError, match=r"val_annotations.txt:1"):
        load_image_sets("tinyimagenet", tmp_path)


def test_image_folder_with_val_and_corrupt_files(tmp_path, caplog):
    make_folder(tmp_path)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.WARNING):
        train, test = load_image_sets("imagefolder", tmp_path, folder=str(tmp_path), image_size=32)
    assert "skipped 1 unreadable image" in caplog.text and "broken.png" in caplog.text
    assert len(train) == 18 and len(train.skipped) == 1 and len(test) == 6
    assert train.targets.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # classes sorted: cat, dog, owl
    assert train.image(0).shape == (3, 32, 32)  # resized and centre-cropped

def test_image_folder_split_fraction_and_errors(tmp_path):
    make_folder(tmp_path, with_val=False, per_class=10)
    train, test = load_image_sets("imagefolder", tmp_path, folder=str(tmp_path), test_fraction=0.2)
    assert len(test) == 6 and len(train) == 24
    assert torch.bincount(test.targets).tolist() == [2, 2, 2]
    with pytest.raises(LayoutError, match=r"missing/train does not exist.*<class>"):
        load_image_sets("imagefolder", tmp_path, folder=str(tmp_path / "missing"))

def test_file_dataset_through_the_datamodule(tmp_path, make_datamodule):
    make_folder(tmp_path, per_class=12)
    dm = make_datamodule("imagefolder", tmp_path, 3, 3, 32, val_size=6, source_options={"folder": str(tmp_path), "image_size": 32})
    dm.set_train_augment("trivialaugment")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert len(dm.train_idx) == 30 and len(dm.val_idx) == 6 and len(dm.test_idx) == 6


@pytest.mark.parametrize("grey_files", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_folders_are_read_with_the_configured_channels(tmp_path, make_datamodule, grey_files, channels):
    make_folder(tmp_path, per_class=8, grey=grey_files)
    dm = make_datamodule("imagefolder", tmp_path, 3, channels, 32, val_size=3,
                         source_options={"folder": str(tmp_path), "image_size": 32, "channels": channels})
    dm.set_train_augment("minimal")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1] == channels
    raw = dm.train_set.image(0)
    assert raw.shape == (channels, 32, 32) and raw.dtype == torch.uint8
    if grey_files and channels == 3:  # a grey file read as RGB repeats its one channel
        assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])


def test_a_channel_count_that_does_not_match_the_config_names_the_fix(tmp_path, make_datamodule):
    from daqkd.data.files import ImageFiles
    from daqkd.errors import ConfigError

    make_folder(tmp_path, per_class=4)
    dm = make_datamodule("imagefolder", tmp_path, 3, 1, 32, val_size=3,
                         source_options={"folder": str(tmp_path), "image_size": 32, "channels": 3})
    with pytest.raises(ConfigError, match=r"have 3 channels, but dataset.in_channels=1; set dataset.in_channels=3"):
        dm.setup()
    with pytest.raises(ConfigError, match=r"1 \(grey\) or 3 \(RGB\)"):
        ImageFiles([tmp_path / "train" / "cat" / "0.png"], [0], 40, channels=2)
