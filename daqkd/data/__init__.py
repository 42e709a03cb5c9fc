"""Data sets (one registry of readers), sampling and the LightningDataModule."""
from daqkd.data import files  # noqa: F401  (registers the file-based readers: tinyimagenet, imagefolder)
from daqkd.data.datamodule import ImageDataModule
from daqkd.data.sampling import split_indices, stratified_indices
from daqkd.data.sources import DatasetNotFoundError, ImageSet, load_image_sets, read_idx, reader, register_source

__all__ = [
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageSet",
    "load_image_sets",
    "read_idx",
    "reader",
    "register_source",
    "split_indices",
    "stratified_indices",
]
