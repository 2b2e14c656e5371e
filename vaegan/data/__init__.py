"""Data: sources on disk (``sources``), the preprocessed cache (``cache``), pixel transforms
(``transforms``) and the LightningDataModules that serve them (``datamodules``)."""

from vaegan.data.cache import ImageArrays, default_cache_dir, load_or_build
from vaegan.data.datamodules import (
    DATAMODULES, ArrayDataModule, CachedDataModule, CachedImages, CelebADataModule, CIFAR10DataModule,
    DigitsDataModule, FolderDataModule, NpzDataModule, SyntheticDataModule, build_datamodule,
)
from vaegan.data.errors import DataError
from vaegan.data.transforms import crop_and_resize, to_model_input, to_uint8

__all__ = [
    "DATAMODULES", "ArrayDataModule", "CachedDataModule", "CachedImages", "CelebADataModule", "CIFAR10DataModule",
    "DataError", "DigitsDataModule", "FolderDataModule", "ImageArrays", "NpzDataModule", "SyntheticDataModule",
    "build_datamodule", "crop_and_resize", "default_cache_dir", "load_or_build", "to_model_input", "to_uint8",
]
