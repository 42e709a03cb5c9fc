"""The datamodule: splits, loaders, the one training DA (daqkd/data/datamodule.py)."""

import pytest
import torch
from fakedata import make_fmnist

from daqkd import build
from daqkd.augment import AugmentPipeline


def test_changing_the_da_after_a_loader_exists_is_an_error(make_cfg):
    dm = build.build_datamodule(make_cfg())
    dm.set_train_augment("minimal")
    dm.train_dataloader()
    dm.set_train_augment("minimal")  # the same DA again is fine
    with pytest.raises(RuntimeError, match="cannot change from 'minimal' to 'cutmix'"):
        dm.set_train_augment("cutmix")

def test_no_training_loader_without_a_da(make_cfg):
    dm = build.build_datamodule(make_cfg())
    with pytest.raises(RuntimeError, match="no training DA installed"):
        dm.train_dataloader()

def test_scoring_and_training_share_one_pipeline(make_cfg):
    """The metric's loader applies the DA exactly as the training loader does: same images and
    draws give the same tensors, CutMix included."""
    cfg = make_cfg()
    dm = build.build_datamodule(cfg)
    dm.setup()
    for name in ("trivialaugment", "cutmix"):
        scoring = dm.augment_loader(name, None, 32, seed=7)  # None: every training image, in the metric's order
        assert torch.equal(torch.sort(scoring.dataset.indices).values, torch.sort(dm.train_idx).values)
        sx, sy = next(iter(scoring))
        order = scoring.sampler.order(0)[:32]
        assert [i for i, _ in order] == list(range(32))
        pipe = dm.train_loader(name).collate_fn
        assert type(pipe) is AugmentPipeline and pipe.name == name
        idx = scoring.dataset.indices
        samples = [(pipe.transform(dm.train_set.image(int(idx[i])), s), int(dm.train_set.targets[idx[i]]), s) for i, s in order]
        tx, ty = pipe.collate(samples)
        assert torch.equal(sx, tx) and torch.equal(sy, ty)



def test_datamodule_split_subsets_and_batches(tmp_path, make_datamodule):
    make_fmnist(tmp_path / "fashion_mnist", n_train=200, n_test=50)
    dm = make_datamodule("fashion_mnist", tmp_path, 10, 1, 28, val_size=40, train_subset=100, batch_size=16,
                         source_options={"search_dirs": []})
    dm.setup()
    assert len(dm.train_idx) == 100 and len(dm.val_idx) == 40
    assert not set(dm.train_idx.tolist()) & set(dm.val_idx.tolist())
    dm.set_train_augment("cutmix")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16, 10)
    loader = dm.augment_loader("minimal", 30, 8, seed=0)
    assert sum(len(b[1]) for b in loader) == 30
    # Same seed, same draws, whatever the global RNG does in between; two passes draw afresh.
    first = dm.augment_loader("trivialaugment", 30, 8, seed=5)
    torch.manual_seed(123)
    again = dm.augment_loader("trivialaugment", 30, 8, seed=5)
    a1, a2 = (torch.cat([b[0] for b in first]) for _ in range(2))
    b1, b2 = (torch.cat([b[0] for b in again]) for _ in range(2))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, torch.cat([b[0] for b in dm.augment_loader("trivialaugment", 30, 8, seed=6)]))


@pytest.mark.parametrize("override", ["+augment.params.randaugment.magnitude=0", "+augment.params.randaugment.num_ops=1"])
def test_augment_params_reach_the_pipeline(make_cfg, first_train_batch, override):
    x_default, _ = first_train_batch(make_cfg(), "randaugment")
    x_changed, _ = first_train_batch(make_cfg(override), "randaugment")
    assert not torch.equal(x_default, x_changed)

def test_cutmix_alpha_reaches_the_batch(make_cfg, first_train_batch):
    _, y1 = first_train_batch(make_cfg(), "cutmix")
    _, y2 = first_train_batch(make_cfg("+augment.params.cutmix.alpha=0.2"), "cutmix")
    assert not torch.equal(y1, y2)

def test_flip_and_padding_change_the_training_images(make_cfg, first_train_batch):
    plain = make_cfg("dataset.datamodule.flip=false", "dataset.datamodule.padding=0")
    x_plain, y = first_train_batch(plain, "minimal")
    dm = build.build_datamodule(plain)
    loader = dm.train_loader("minimal")
    order = loader.sampler.order(0)[: len(y)]
    clean = torch.stack([dm.pipeline(None).per_image(dm.train_set.image(int(dm.train_idx[i]))) for i, _ in order])
    assert torch.equal(x_plain, clean)  # no flip, no padding: the crop is the whole image
    x_flip, _ = first_train_batch(make_cfg("dataset.datamodule.flip=true", "dataset.datamodule.padding=0"), "minimal")
    flipped = (x_flip == clean.flip(-1)).flatten(1).all(1) & (x_flip != clean).flatten(1).any(1)
    assert 0.2 < flipped.float().mean() < 0.8  # about half the images mirrored
    x_pad, _ = first_train_batch(make_cfg("dataset.datamodule.flip=false", "dataset.datamodule.padding=4"), "minimal")
    assert (x_pad != clean).flatten(1).any(1).float().mean() > 0.5  # shifted crops


def test_a_misspelt_source_option_is_an_error_naming_the_allowed_ones(make_cfg):
    from hydra.errors import InstantiationException

    expected = r"source_options.serch_dirs is not an option of the fashion_mnist reader; allowed: search_dirs"
    with pytest.raises((ValueError, InstantiationException), match=expected):
        build.build_datamodule(make_cfg("+dataset.datamodule.source_options.serch_dirs=[/x]"))


def test_val_size_as_a_fraction_and_a_warning_when_validation_takes_too_much(tmp_path, make_datamodule, caplog):
    make_fmnist(tmp_path / "fashion_mnist", n_train=1437, n_test=50)
    opts = {"source_options": {"search_dirs": []}}
    dm = make_datamodule("fashion_mnist", tmp_path, 10, 1, 28, val_size=0.1, **opts)
    dm.setup()
    assert len(dm.val_idx) == 144 and len(dm.train_idx) == 1437 - 144
    with caplog.at_level("WARNING"):
        dm = make_datamodule("fashion_mnist", tmp_path, 10, 1, 28, val_size=1000, **opts)
        dm.setup()
    assert len(dm.train_idx) == 437 and "holds out 1000 of 1437 training images" in caplog.text
    from daqkd.errors import ConfigError

    with pytest.raises(ConfigError, match="leaving none to train on"):
        make_datamodule("fashion_mnist", tmp_path, 10, 1, 28, val_size=1437, **opts).setup()


def test_a_class_sorted_data_set_is_scored_in_a_shuffled_order(tmp_path, make_datamodule):
    # An ImageFolder is read class by class. Scored in that order, CutMix mixed each image with one of
    # its own class (a handful of rows got a second class) and every `variance` group held one class.
    from fakedata import make_folder

    make_folder(tmp_path / "f", with_val=False, per_class=30)
    dm = make_datamodule("imagefolder", tmp_path, 3, 3, 32, source_options={"folder": str(tmp_path / "f")}, val_size=15)
    dm.setup()
    assert torch.equal(dm.train_set.targets, torch.sort(dm.train_set.targets).values)  # the source is class-sorted
    idx = dm.metric_indices(None, seed=0)
    labels = dm.train_set.targets[idx]
    groups = labels[: len(labels) // 5 * 5].view(-1, 5)
    one_class = sum(len(torch.unique(g)) == 1 for g in groups) / len(groups)
    assert one_class < 0.3  # in class order: every group; shuffled: (1/3)^4 of them
    assert torch.equal(idx, dm.metric_indices(None, seed=0))  # the same order for every pass and candidate
    mixed = rows = 0
    for _, _, _images, soft in dm.scoring_loader(["cutmix"], None, 15, seed=0):
        rows += len(soft)
        mixed += int(((soft > 0).sum(1) > 1).sum())
    assert mixed / rows > 0.4  # CutMix mixes across classes, as in training (2/3 of the rows at 3 classes)
