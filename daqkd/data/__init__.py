"""Data sets, sampling and the LightningDataModule."""
from daqkd.data.datamodule import ImageDataModule
from daqkd.data.sampling import split_indices, stratified_indices
from daqkd.data.sources import DatasetNotFoundError, ImageSet, load_image_sets, read_idx

__all__ = [
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageSet",
    "load_image_sets",
    "read_idx",
    "split_indices",
    "stratified_indices",
]
