"""Readers of IDX and CIFAR pickle files written by the tests in the real formats (daqkd/data/sources.py)."""
import pickle

import pytest
import torch
from fakedata import make_fmnist, write_cifar

from daqkd.data import (
    DatasetNotFoundError,
    load_image_sets,
    read_idx,
)


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
