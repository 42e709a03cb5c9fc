"""Data sets stored as image files: Tiny-ImageNet (official ``tiny-imagenet-200`` layout) and any
ImageFolder tree. Images are decoded per item (inside DataLoader workers) to uint8 [3, S, S].

Unreadable files are found when the data set is opened (``verify=True``), skipped and counted with
one warning, so a corrupt file never crashes a run hours in; a file that still fails to decode
later is replaced by the next image, with a warning naming it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from daqkd.data.sampling import split_indices
from daqkd.data.sources import register_source
from daqkd.errors import ConfigError, DatasetNotFoundError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class LayoutError(DatasetNotFoundError):
    """A folder that does not have the expected layout: names the path and the layout."""


class ImageFiles:
    """Image files with labels; ``image(j)`` decodes file j to uint8 [channels, size, size], grey
    (1 channel) or RGB (3), whatever the file holds (shorter side resized to ``size``, then
    centre-cropped; ``size=None`` keeps the file's size)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], size: int | None = None, verify: bool = True,
                 channels: int = 3):
        if channels not in (1, 3):
            raise ConfigError(f"image files can be read with 1 (grey) or 3 (RGB) channels, not {channels}; set dataset.in_channels")
        self.mode = "L" if channels == 1 else "RGB"
        paths, targets = list(paths), list(targets)
        self.skipped: list[Path] = []
        if verify:
            probes = [_probe(p) for p in paths]
            keep = [i for i, pr in enumerate(probes) if pr is not None]
            self.skipped = [paths[i] for i in sorted(set(range(len(paths))) - set(keep))]
            if self.skipped:
                shown = ", ".join(str(p) for p in self.skipped[:5])
                log.warning("skipped %d unreadable image files (%s%s)", len(self.skipped), shown, " …" if len(self.skipped) > 5 else "")
            _report_modes_and_sizes([probes[i] for i in keep], size)
            paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
        if not paths:
            raise LayoutError("no readable images found")
        self.paths, self.size = paths, size
        self.targets = torch.tensor(targets, dtype=torch.int64)
        self.classes: list[str] | None = None  # the class names, label order (set by the reader)

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """A hash of the file list and the files: each file's path below the common folder, its label
        and its bytes (the first MB), with the decoding mode and size (computed once)."""
        if not hasattr(self, "_fingerprint"):
            base = Path(os.path.commonpath([str(p) for p in self.paths]))
            h = hashlib.sha256(f"{self.mode}|{self.size}".encode())
            for p, t in zip(self.paths, self.targets.tolist()):
                h.update(f"{p.relative_to(base) if p != base else p.name}|{t}|".encode())
                with open(p, "rb") as f:
                    h.update(f.read(1 << 20))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def image(self, j: int) -> torch.Tensor:
        for k in range(len(self.paths)):
            path = self.paths[(j + k) % len(self.paths)]
            try:
                with Image.open(path) as im:
                    img = to_uint8(im, self.mode)
                break
            except (OSError, UnidentifiedImageError) as e:
                warnings.warn(f"cannot decode {path} ({e}); using the next image instead", stacklevel=2)
        if self.size is not None and tuple(img.shape[1:]) != (self.size, self.size):
            img = TF.center_crop(TF.resize(img, self.size, antialias=True), [self.size, self.size])
        return img


# Pillow modes of more than 8 bits per sample: (the value of full scale, its name).
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def to_uint8(im: Image.Image, mode: str) -> torch.Tensor:
    """An opened image as uint8 [C, H, W] in ``mode`` ("L" or "RGB"), whatever mode the file holds:
    16-bit grey (``I;16``, ``I``) is scaled from its 0–65535 range to 0–255 (Pillow's own conversion
    to 8 bits clips, turning almost every pixel white); float images (``F``) are taken as 0–1 when
    they lie there, else as 0–255; palettes with transparency go through RGBA; alpha is dropped, as
    torchvision's ImageFolder does."""
    if im.mode in WIDE_MODES or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        else:
            a = a * (255.0 / WIDE_MODES[im.mode])
        grey = torch.from_numpy(np.clip(np.rint(a), 0, 255).astype(np.uint8))[None]
        return grey if mode == "L" else grey.expand(3, -1, -1).clone()
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return TF.pil_to_tensor(im.convert(mode))


def _probe(path: Path) -> tuple[str, tuple[int, int]] | None:
    """(mode, size) of a readable image file, None for an unreadable one (the header and a check)."""
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            im.verify()
        return mode, size
    except Exception:
        return None


def _report_modes_and_sizes(probes: list[tuple[str, tuple[int, int]]], size: int | None) -> None:
    """One warning for images that will be resized (with the sizes seen) and one for images of more
    than 8 bits (with their count), so nothing changes silently."""
    if size is not None:
        other = Counter(s for _, s in probes if s != (size, size))
        if other:
            seen = ", ".join(f"{w}×{h} ({n})" for (w, h), n in other.most_common(5))
            log.warning("%d of %d images are not %d×%d and are resized (shorter side to %d, centre crop); sizes seen: %s%s",
                        sum(other.values()), len(probes), size, size, size, seen, ", …" if len(other) > 5 else "")
    wide = Counter(m for m, _ in probes if m in WIDE_MODES or m == "F")
    if wide:
        log.warning("%d images have more than 8 bits per pixel (%s); they are scaled to 8 bits from their full range",
                    sum(wide.values()), ", ".join(f"{m}: {n}" for m, n in wide.items()))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# --------------------------------------------------------------------------- Tiny-ImageNet

TINY_LAYOUT = (
    "tiny-imagenet-200/wnids.txt, tiny-imagenet-200/train/<wnid>/images/*.JPEG, "
    "tiny-imagenet-200/val/images/*.JPEG and tiny-imagenet-200/val/val_annotations.txt"
)


@register_source("tinyimagenet")
def load_tiny_imagenet(root: Path, download: bool = False, image_size: int = 64, verify: bool = True):
    """Train: 500 images per class; test: the official validation set, labelled by val_annotations.txt."""
    base = Path(root) / "tiny-imagenet-200"
    if not base.is_dir() and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_IMAGENET_URL, str(root))
        except Exception as e:
            log.warning("download of Tiny-ImageNet failed: %s", e)
    wnids_file, ann = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for needed in (base / "train", wnids_file, ann):
        if not needed.exists():
            raise LayoutError(
                f"Tiny-ImageNet: {needed} is missing. Expected the official layout under {root}: {TINY_LAYOUT}. "
                "Run once with dataset.datamodule.download=true on a machine with a network, or unpack "
                "tiny-imagenet-200.zip there (set paths.data_dir to move it)."
            )
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_targets = [], []
    for w in wnids:
        files = _images_in(base / "train" / w)
        if not files:
            raise LayoutError(f"Tiny-ImageNet: no images in {base / 'train' / w}; expected {TINY_LAYOUT}")
        train_paths += files
        train_targets += [index[w]] * len(files)
    val_paths, val_targets = [], []
    for line_no, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise LayoutError(f"{ann}:{line_no}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line!r}")
        val_paths.append(base / "val" / "images" / parts[0])
        val_targets.append(index[parts[1]])
    sets = (ImageFiles(train_paths, train_targets, image_size, verify), ImageFiles(val_paths, val_targets, image_size, verify))
    for s in sets:
        s.classes = list(wnids)
    return sets


# --------------------------------------------------------------------------- ImageFolder


@register_source("imagefolder")
def load_image_folder(root: Path, download: bool = False, folder: str | None = None, image_size: int = 64,
                      channels: int = 3, test_fraction: float = 0.2, verify: bool = True, seed: int = 0):
    """``folder/train/<class>/*`` plus ``folder/val/<class>/*`` (the test split), or, without
    ``val/``, a stratified ``test_fraction`` of train held out as the test split."""
    base = Path(folder) if folder else Path(root)
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise LayoutError(
            f"ImageFolder: {train_dir} does not exist. Expected {base}/train/<class>/<image> and optionally "
            f"{base}/val/<class>/<image>; set dataset.datamodule.source_options.folder=PATH."
        )
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise LayoutError(f"ImageFolder: {train_dir} needs at least two class folders, found {classes}")

    def scan(split_dir: Path):
        paths, targets = [], []
        for i, c in enumerate(classes):
            files = _images_in(split_dir / c) if (split_dir / c).is_dir() else []
            paths += files
            targets += [i] * len(files)
        return paths, targets

    paths, targets = scan(train_dir)
    counts = {c: targets.count(i) for i, c in enumerate(classes)}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise LayoutError(
            f"ImageFolder: {train_dir} has class folders with no images: {', '.join(empty)} (images per class: "
            f"{', '.join(f'{c} {n}' for c, n in counts.items())}). Add images or remove the empty folders."
        )
    if (base / "val").is_dir():
        extra = sorted(d.name for d in (base / "val").iterdir() if d.is_dir() and d.name not in classes)
        if extra:
            raise LayoutError(f"ImageFolder: {base / 'val'} has classes missing from train: {extra}")
        vp, vt = scan(base / "val")
        return _named((ImageFiles(paths, targets, image_size, verify, channels), ImageFiles(vp, vt, image_size, verify, channels)), classes)
    if not 0 < test_fraction < 1:
        raise LayoutError(f"ImageFolder: no {base / 'val'} and test_fraction={test_fraction}; give a fraction in (0, 1)")
    keep, held = split_indices(torch.tensor(targets), max(len(classes), int(round(test_fraction * len(paths)))), seed)
    pick = lambda idx: ([paths[i] for i in idx.tolist()], [targets[i] for i in idx.tolist()])  # noqa: E731
    return _named((ImageFiles(*pick(keep), image_size, verify, channels), ImageFiles(*pick(held), image_size, verify, channels)), classes)


def _named(sets: tuple, classes: list[str]) -> tuple:
    for s in sets:
        s.classes = list(classes)
    return sets
