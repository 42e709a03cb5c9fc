"""Data readers on small files written in the real on-disk formats, sampling, and the pipelines."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from daqkd.augment import PAPER_POOL, available_augments, build_augmentation, sample_pipeline
from daqkd.data import DatasetNotFoundError, ImageDataModule, load_image_sets, read_idx, stratified_indices
from daqkd.data.sampling import split_indices
from fakedata import write_cifar


def write_idx(path, array: np.ndarray, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fmnist(folder, n_train=40, n_test=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, compress)


def test_idx_reader_and_fashion_mnist_loader(tmp_path):
    make_fmnist(tmp_path / "fashion_mnist", compress=False)
    train, test = load_image_sets("fashion_mnist", tmp_path, search_dirs=[])
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.targets.tolist() == [i % 10 for i in range(20)]
    raw = read_idx(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte")
    assert torch.equal(train.images[:, 0], torch.from_numpy(raw.copy()))


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    make_fmnist(tmp_path / "fashion_mnist", compress=False)
    p = tmp_path / "fashion_mnist" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_image_sets("fashion_mnist", tmp_path, search_dirs=[])


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_image_sets("fashion_mnist", tmp_path, search_dirs=[tmp_path / "elsewhere"])
    msg = str(e.value)
    assert str(tmp_path / "fashion_mnist") in msg and str(tmp_path / "elsewhere") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_image_sets("cifar10", tmp_path)


@pytest.mark.parametrize("name,n_train,n_test", [("cifar10", 60, 12), ("cifar100", 12, 12)])
def test_cifar_pickle_batches(tmp_path, name, n_train, n_test):
    folder = write_cifar(tmp_path, name)
    train, test = load_image_sets(name, tmp_path)
    assert train.images.shape == (n_train, 3, 32, 32) and len(test) == n_test
    first = pickle.load(open(folder / ("data_batch_1" if name == "cifar10" else "train"), "rb"), encoding="bytes")
    # Channel-major rows: the first 1024 bytes are the red plane.
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(first[b"data"][0, :1024].copy()))
    if name == "cifar10":
        assert train.targets.tolist() == [i % 10 for i in range(60)]
    else:
        assert test.targets.tolist() == [(12 + i) % 100 for i in range(12)]


def test_stratified_indices_keep_class_proportions_and_are_seeded():
    targets = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(targets, 10, seed=3)
    assert torch.bincount(targets[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, stratified_indices(targets, 10, seed=3))
    assert not torch.equal(idx, stratified_indices(targets, 10, seed=4))
    keep, held = split_indices(targets, 20, seed=0)
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 100
    assert torch.bincount(targets[stratified_indices(targets, 3, 0)]).tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", sorted(set(available_augments())))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_runs_on_uint8(name, channels):
    aug = build_augmentation(name, num_classes=10)
    tf = sample_pipeline(aug.sample, [0.5] * channels, [0.25] * channels, 28, 2, True)
    img = torch.randint(0, 256, (channels, 28, 28), dtype=torch.uint8)
    out = tf(img)
    assert out.shape == (channels, 28, 28) and out.dtype == torch.float32
    if aug.batch is not None:
        x, y = aug.batch(torch.stack([out] * 4), torch.tensor([0, 1, 2, 3]))
        assert y.shape == (4, 10) and torch.allclose(y.sum(1), torch.ones(4))
    assert set(PAPER_POOL) <= set(available_augments())


def test_combined_and_unknown_augmentations():
    aug = build_augmentation("trivialaugment+cutmix", 10)
    assert aug.sample is not None and aug.batch is not None
    with pytest.raises(ValueError, match="unknown augmentation 'nope'"):
        build_augmentation("nope", 10)


def test_datamodule_split_subsets_and_batches(tmp_path):
    make_fmnist(tmp_path / "fashion_mnist", n_train=200, n_test=50)
    dm = ImageDataModule("fashion_mnist", str(tmp_path), 10, 1, 28, [0.3], [0.3], val_size=40, train_subset=100,
                         batch_size=16, num_workers=0, source_options={"search_dirs": []})
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


def test_draws_do_not_depend_on_workers_or_touch_the_global_rng(tmp_path):
    make_fmnist(tmp_path / "fashion_mnist", n_train=200, n_test=50)
    kw = dict(val_size=40, batch_size=16, source_options={"search_dirs": []})
    dms = [ImageDataModule("fashion_mnist", str(tmp_path), 10, 1, 28, [0.3], [0.3], num_workers=w, **kw) for w in (0, 2)]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batches = [next(iter(dm.train_loader("trivialaugment+cutmix"))) for dm in dms]
    assert torch.equal(torch.get_rng_state(), state)  # seeding each image's draws leaves the global stream alone
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
