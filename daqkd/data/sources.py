"""Readers for the on-disk data sets, in one registry. A reader is registered under the data set's
name (``@register_source("name")``), is called as ``reader(root, download=..., **source_options)``
and returns (train, test): in-memory ``ImageSet``s (uint8 [N, C, H, W], int64 labels [N]) or
``ImageFiles`` decoded per item. Adding a data set means one reader plus one conf/dataset/ file.

Nothing here downloads unless asked to; a data set that cannot be found raises
``DatasetNotFoundError`` naming every place searched and how to get the files.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daqkd.errors import ConfigError, DataError, DatasetNotFoundError, unknown_keys
from daqkd.registry import SOURCES

log = logging.getLogger(__name__)


def register_source(name: str):
    """Decorator: register ``reader(root, download=False, **options) -> (train, test)`` as data set
    ``name`` (daqkd.registry.SOURCES)."""
    return SOURCES.register(name)


def reader(name: str) -> Callable[..., tuple]:
    return SOURCES.get(name)


def check_source_options(name: str, options: Mapping[str, Any]) -> None:
    """Every option must be a keyword of the data set's reader: a misspelt one is an error naming
    the allowed keys, never silently ignored."""
    unknown, allowed = unknown_keys(options, reader(name), exclude=("root", "download"))
    if unknown:
        raise ConfigError(
            f"dataset.datamodule.source_options.{unknown[0]} is not an option of the {name} reader; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W] with int64 labels [N]."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str] | None = None  # the class names, label order (None: not known)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, j: int) -> torch.Tensor:
        return self.images[j]

    def fingerprint(self) -> str:
        """A hash of the pixels and the labels (computed once)."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256(self.images.numpy().tobytes())
            h.update(self.targets.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


# --------------------------------------------------------------------------- Fashion-MNIST (IDX files)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}; delete it and fetch it again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it and fetch it again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"{path} is truncated: {len(body)} bytes of data, expected {expected} for shape {shape}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find_file(dirs: Sequence[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def fashion_mnist_dirs(root: Path, search_dirs: Sequence[str | Path]) -> list[Path]:
    """Where Fashion-MNIST may live: our data dir, torchvision's layout under it, then system dirs."""
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", root, *map(Path, search_dirs)]


@register_source("fashion_mnist")
def load_fashion_mnist(root: Path, download: bool = False, search_dirs: Sequence[str | Path] = (FASHION_MNIST_DEBIAN_DIR,)):
    dirs = fashion_mnist_dirs(root, search_dirs)
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    if any(_find_file(dirs, s) is None for s in stems) and download:
        _torchvision_download("FashionMNIST", root)
    found = {s: _find_file(dirs, s) for s in stems}
    missing = [s for s, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            "Fashion-MNIST not found: missing "
            + ", ".join(missing)
            + " (plain or .gz) in "
            + ", ".join(str(d) for d in dirs)
            + ". Get it with `apt-get install dataset-fashion-mnist` (Debian), or run with "
            "dataset.datamodule.download=true on a machine with a network, or copy the four IDX files into "
            f"{dirs[0]}."
        )
    out = {}
    for split, (img_stem, lbl_stem) in FASHION_MNIST_FILES.items():
        images = read_idx(found[img_stem])
        labels = read_idx(found[lbl_stem])
        out[split] = ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                              list(FASHION_MNIST_CLASSES))
    log.info("Fashion-MNIST from %s", found[FASHION_MNIST_FILES["train"][0]].parent)
    return out["train"], out["test"]


# --------------------------------------------------------------------------- CIFAR (python pickle batches)

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR_LAYOUTS = {
    # name: (folder, training batch files, test batch files, label key, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", "CIFAR100"),
}


def read_cifar_batches(folder: Path, files: Sequence[str], label_key: bytes) -> ImageSet:
    """Read CIFAR's python-pickle batch files (dicts with b"data" [N, 3072] uint8 and labels)."""
    images, labels = [], []
    for name in files:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels.extend(int(v) for v in batch[label_key])
        except FileNotFoundError:
            raise
        except Exception as e:
            raise DataError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e}); delete the folder and fetch it again") from e
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data has shape {data.shape}, expected [N, 3072]")
        images.append(data.reshape(-1, 3, 32, 32))
    return ImageSet(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))


def _load_cifar(name: str, root: Path, download: bool = False):
    folder, train_files, test_files, key, tv_class = CIFAR_LAYOUTS[name]
    path = root / folder
    expected = [*train_files, *test_files]
    if download and not all((path / f).is_file() for f in expected):
        _torchvision_download(tv_class, root)
    missing = [f for f in expected if not (path / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{name} not found: {path} lacks {', '.join(missing)}. Run once with dataset.datamodule.download=true on a "
            f"machine with a network, or put the official python version ('{folder}/' with {', '.join(expected)}) "
            f"under {root} (set paths.data_dir to move it)."
        )
    train, test = read_cifar_batches(path, train_files, key), read_cifar_batches(path, test_files, key)
    train.classes = test.classes = cifar_classes(name, path)
    return train, test


def cifar_classes(name: str, path: Path) -> list[str] | None:
    """CIFAR-10's class names; CIFAR-100's from its ``meta`` file (fine_label_names), if it is there."""
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    try:
        with open(path / "meta", "rb") as f:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in pickle.load(f, encoding="bytes")[b"fine_label_names"]]
    except (OSError, KeyError, pickle.UnpicklingError, EOFError, TypeError):
        return None


@register_source("cifar10")
def load_cifar10(root: Path, download: bool = False):
    return _load_cifar("cifar10", root, download)


@register_source("cifar100")
def load_cifar100(root: Path, download: bool = False):
    return _load_cifar("cifar100", root, download)


def _torchvision_download(cls_name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        getattr(tvd, cls_name)(str(root), train=True, download=True)
        getattr(tvd, cls_name)(str(root), train=False, download=True)
    except Exception as e:  # no network: fall through to the not-found error, with the cause logged
        log.warning("download of %s into %s failed: %s", cls_name, root, e)


_DECODED: dict[str, tuple] = {}


def load_image_sets(name: str, root: str | Path, download: bool = False, **options) -> tuple[ImageSet, ImageSet]:
    """(train, test) for data set ``name`` under ``root``; ``options`` are its reader's keywords.

    Decoded once per process: the same (name, root, options) returns the same objects, so a sweep's
    jobs, the teacher, the scorer and the student share one copy. Treat the images as read-only.
    """
    key = json.dumps([name, str(Path(root).expanduser().resolve()), options], sort_keys=True, default=str)
    if key not in _DECODED:
        _DECODED[key] = reader(name)(Path(root).expanduser(), download=download, **options)
    return _DECODED[key]

