"""Small data sets written in the real on-disk formats, shared by the tests."""
import gzip
import pickle
import struct

import numpy as np
from PIL import Image


def write_cifar(root, name, n_per_file=12):
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, files, key, classes = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 10
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    for j, f in enumerate(files):
        labels = [(j * n_per_file + i) % classes for i in range(n_per_file)]
        batch = {b"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8), key: labels, b"batch_label": b"x"}
        with open(folder / f, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def write_image(path, size=64, seed=0, fmt=None, grey=False):
    """A random image file: RGB, or one grey channel (mode "L") with ``grey``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if grey else (size, size, 3)
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def make_tiny_imagenet(root, classes=4, per_class=3, val=8):
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, w in enumerate(wnids):
        for k in range(per_class):
            write_image(base / "train" / w / "images" / f"{w}_{k}.JPEG", seed=c * 10 + k, fmt="JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for k in range(val):
        write_image(base / "val" / "images" / f"val_{k}.JPEG", seed=100 + k, fmt="JPEG")
        lines.append(f"val_{k}.JPEG\t{wnids[(k * 3) % classes]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


def write_idx(path, array, compress=True):
    """An IDX file (the MNIST format): magic, dimensions, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fmnist(folder, n_train=40, n_test=20, compress=True):
    """The four Fashion-MNIST IDX files, random pixels, labels cycling through the 10 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfx = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, compress)


def make_folder(root, with_val=True, per_class=6, grey=False):
    """An ImageFolder tree: train/{cat,dog,owl}/*.png (and val/ with two per class), 40×40 random images."""
    for i, c in enumerate(("cat", "dog", "owl")):
        for k in range(per_class):
            write_image(root / "train" / c / f"{k}.png", size=40, seed=100 * i + k, grey=grey)
        if with_val:
            for k in range(2):
                write_image(root / "val" / c / f"v{k}.png", size=40, seed=500 + k, grey=grey)
