"""Data sources as LightningDataModules. Every dataset yields (image in [-1, 1], label).

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, shipped with the package, so the
  quickstart runs offline), resized to ``image_size`` with bilinear interpolation.
- ``synthetic``: uniform noise in [-1, 1], made on the fly from a seed; no I/O.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


def expand_channels(x: Tensor, channels: int) -> Tensor:
    """(N, 1, H, W) grayscale -> (N, channels, H, W)."""
    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels}: must be 1 or 3")
    return x.expand(-1, channels, -1, -1).contiguous()


def load_digits_tensor(image_size: int, channels: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (N, C, S, S) floats in [-1, 1] and (N,) labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # pixel values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = expand_channels(x.clamp(0, 1) * 2 - 1, channels)
    return x, torch.from_numpy(digits.target).long()


class SyntheticImages(Dataset):
    """``length`` images of uniform noise in [-1, 1]; item i is the same for a given seed."""

    def __init__(self, length: int, image_size: int, channels: int, seed: int = 0):
        self.length, self.shape, self.seed = length, (channels, image_size, image_size), seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.rand(self.shape, generator=gen) * 2 - 1, 0


class ImageDataModule(L.LightningDataModule):
    """Shared loader logic: a seeded train/validation split and shuffled, full training batches."""

    def __init__(
        self, batch_size: int = 16, image_size: int = 32, channels: int = 3, num_workers: int = 0,
        val_fraction: float = 0.1, seed: int = 0,
    ):
        super().__init__()
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.num_workers, self.val_fraction, self.seed = num_workers, val_fraction, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def build(self) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self.build()
        n_val = int(len(full) * self.val_fraction)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.val_set, self.train_set = Subset(full, order[:n_val]), Subset(full, order[n_val:])
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {len(self.train_set)} training images; "
                "lower data.batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def fixed_images(self, n: int) -> Tensor:
        """The first n validation images (or training images if there are too few): a fixed panel."""
        self.setup()
        source = self.val_set if len(self.val_set) >= n else self.train_set
        return torch.stack([source[i][0] for i in range(min(n, len(source)))])


class DigitsDataModule(ImageDataModule):
    def build(self) -> Dataset:
        return TensorDataset(*load_digits_tensor(self.image_size, self.channels))


class SyntheticDataModule(ImageDataModule):
    def __init__(self, length: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def build(self) -> Dataset:
        return SyntheticImages(self.length, self.image_size, self.channels, self.seed)


DATAMODULES: dict[str, type[ImageDataModule]] = {"digits": DigitsDataModule, "synthetic": SyntheticDataModule}
PLANNED = ("celeba", "cifar10")  # configured (conf/data, conf/experiment) but without a loader yet


def build_datamodule(name: str, **kwargs) -> ImageDataModule:
    if name in PLANNED:
        raise NotImplementedError(
            f"data={name}: the {name} loader is not part of this version yet (its experiment configs are); "
            "train on data=digits or data=synthetic meanwhile"
        )
    if name not in DATAMODULES:
        raise ValueError(f"data.name={name!r} is not a data source; choose one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)
