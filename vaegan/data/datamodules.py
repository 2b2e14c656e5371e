"""LightningDataModules: one per source, all serving uint8 batches from one array.

Loaders hand out uint8 (N, H, W, C) batches read from the cache a whole batch at a time; the
conversion to floats in [-1, 1] and the optional horizontal flips happen on the training device,
in ``on_after_batch_transfer``. Splits: a source's own partition (CelebA's official
train/valid/test, CIFAR-10's train/test, an npz's ``partition``) or a seeded split.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from vaegan.config.schema import DataConfig, TrainConfig
from vaegan.data.cache import ImageArrays, load_or_build
from vaegan.data.errors import DataError
from vaegan.data.celeba import CelebASource
from vaegan.data.sources import PARTITIONS, CIFAR10Source, FolderSource, NpzSource, Source
from vaegan.data.transforms import to_model_input

FLIP_STREAM = 1 << 40  # flip seeds live apart from the training noise seeds (seed * 1_000_003 + iteration)


def already_batched(batch):
    """collate_fn for datasets that return whole batches (``__getitems__``)."""
    return batch


class CachedImages(Dataset):
    """Rows ``indices`` of a uint8 image array, with an optional numeric per-image ``target``
    (e.g. ``attrs``, ``labels``). Items are (H, W, C) uint8 tensors or (image, target) pairs;
    ``__getitems__`` reads a whole batch with one fancy index, which keeps the loader cheap."""

    def __init__(self, data: ImageArrays, indices: np.ndarray, target: str | None = None):
        self.data, self.indices = data, np.asarray(indices, dtype=np.int64)
        if target is not None and target not in data.arrays:
            raise DataError(f"this dataset has no {target!r}; it has {sorted(data.arrays)}")
        if target is not None and not np.issubdtype(np.asarray(data.arrays[target]).dtype, np.number):
            raise DataError(f"target {target!r} is not numeric; read it from dm.data.arrays[{target!r}] instead")
        self.target = None if target is None else torch.from_numpy(np.asarray(data.arrays[target])[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:  # worker processes reopen the memory map instead of copying it
        state = dict(self.__dict__)
        if self.data.path is not None:
            state["data"] = ImageArrays(None, {}, self.data.excluded, self.data.path)
        return state

    @property
    def images(self) -> np.ndarray:
        if self.data.images is None:
            self.data.images = np.load(self.data.path / "images.npy", mmap_mode="r")
        return self.data.images

    def __getitems__(self, positions: list[int]) -> Tensor | tuple[Tensor, Tensor]:
        rows = self.indices[positions]
        images = torch.from_numpy(self.images[rows])
        return images if self.target is None else (images, self.target[positions])

    def __getitem__(self, position: int) -> Tensor | tuple[Tensor, Tensor]:
        if not -len(self) <= position < len(self):
            raise IndexError(position)
        image = torch.from_numpy(np.array(self.images[self.indices[position]]))
        return image if self.target is None else (image, self.target[position])


class IterationBatchSampler(Sampler[list[int]]):
    """Training batches as a pure function of (seed, iteration, rank, world size).

    Epoch e is a permutation of the dataset seeded by (seed, e), cut into global batches of
    ``batch_size * world_size`` images; rank r takes the r-th slice of each. Each new iterator
    starts at the batch of ``iteration()`` (the iterations already trained), so a run resumed
    mid-epoch continues with exactly the batches it had not seen, whatever a prefetching loader
    had read ahead before it was killed; and N ranks together see the batches one process with
    N times the batch size would.
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 iteration=lambda: 0):
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.iteration = rank, world_size, iteration
        self.global_batch = batch_size * world_size
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), drawn once per epoch
        if length < self.global_batch:
            raise DataError(f"the {length} training images make no global batch of {self.global_batch} "
                            f"(data.batch_size={batch_size} x {world_size} processes); lower data.batch_size")

    def __len__(self) -> int:
        return self.length // self.global_batch

    def batch(self, iteration: int) -> list[int]:
        """The dataset positions of this rank's batch at ``iteration``."""
        epoch, index = divmod(iteration, len(self))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.length))
        start = index * self.global_batch + self.rank * self.batch_size
        return self._order[1][start:start + self.batch_size].tolist()

    def __iter__(self):
        start = self.iteration()
        first = start - start % len(self)
        for iteration in range(start, first + len(self)):
            yield self.batch(iteration)


class IterationDataLoader(DataLoader):
    """A DataLoader whose position is the trainer's iteration (``IterationBatchSampler``), which
    the checkpoint already holds; the state methods tell Lightning it resumes mid-epoch exactly."""

    def state_dict(self) -> dict:
        return {"iteration": self.batch_sampler.iteration()}

    def load_state_dict(self, state: dict) -> None:
        pass  # the position comes back with the trainer's global step


class ArrayDataModule(L.LightningDataModule):
    """Splits, loaders and the on-device transform, for any source loaded as ``ImageArrays``."""

    def __init__(self, batch_size: int = DataConfig.batch_size, image_size: int = DataConfig.image_size,
                 channels: int = DataConfig.channels, num_workers: int = DataConfig.num_workers,
                 val_fraction: float = DataConfig.val_fraction, seed: int = TrainConfig.seed, flip: bool = DataConfig.flip,
                 train_split: str = DataConfig.train_split, split_seed: int = DataConfig.split_seed,
                 worker_timeout: float = DataConfig.worker_timeout):
        """``seed`` (the run's) seeds the flips; ``split_seed`` the held-out split of sources without
        a partition, apart from the run's seed so that every seed of a sweep trains on, and is
        evaluated against, the same images. ``worker_timeout``: seconds a worker may take for one
        batch before the loader gives up (a stuck worker, e.g. with /dev/shm full, would hang the
        run); 0 waits forever."""
        super().__init__()
        if train_split not in ("train", "all"):
            raise DataError(f"data.train_split={train_split!r}: use train (the source's training split) or all")
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.num_workers, self.val_fraction, self.seed = num_workers, val_fraction, seed
        self.flip, self.train_split, self.split_seed = flip, train_split, split_seed
        self.worker_timeout = worker_timeout if num_workers > 0 else 0
        self.data: ImageArrays | None = None
        self.splits: dict[str, np.ndarray] = {}

    def load(self) -> ImageArrays:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = self.load()
        self.splits = self.split_indices()
        if len(self.splits["train"]) < self.batch_size:
            skipped = f" ({len(self.data.excluded)} unreadable images were left out)" if len(self.data.excluded) else ""
            raise DataError(
                f"data.batch_size={self.batch_size} exceeds the {len(self.splits['train'])} training images{skipped}; "
                "lower data.batch_size"
            )

    def split_indices(self) -> dict[str, np.ndarray]:
        usable = np.setdiff1d(np.arange(len(self.data.images)), self.data.excluded)
        if "partition" in self.data.arrays:
            part = self.data.arrays["partition"][usable]
            splits = {name: usable[part == code] for name, code in PARTITIONS.items()}
        else:
            order = usable[np.random.default_rng(self.split_seed).permutation(len(usable))]
            n_val = int(len(usable) * self.val_fraction)
            splits = {"train": np.sort(order[n_val:]), "valid": np.sort(order[:n_val]), "test": order[:0]}
        if self.train_split == "all":
            splits["train"] = usable
        return splits

    @property
    def val_split(self) -> str:
        """The held-out split that later steps evaluate on: valid, or test when there is no valid."""
        return "valid" if len(self.splits.get("valid", ())) else "test"

    def dataset(self, split: str = "train", target: str | None = None) -> CachedImages:
        """Images of one split (train, valid, test); ``target`` adds a per-image array (attrs, labels, ...)."""
        self.setup()
        if split not in self.splits:
            raise DataError(f"split {split!r} does not exist; use one of {sorted(self.splits)}")
        return CachedImages(self.data, self.splits[split], target)

    def dataloader(self, split: str, target: str | None = None, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split, target), batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, collate_fn=already_batched,
            pin_memory=torch.cuda.is_available(), timeout=self.worker_timeout,
        )

    def train_dataloader(self) -> DataLoader:
        """Batches by iteration (``IterationBatchSampler``), this rank's share of each global batch."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        iteration = (lambda: trainer.lightning_module.iteration) if trainer is not None else (lambda: 0)
        dataset = self.dataset("train")
        sampler = IterationBatchSampler(len(dataset), self.batch_size, self.seed, rank, world, iteration)
        return IterationDataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0, collate_fn=already_batched,
                                   pin_memory=torch.cuda.is_available(), timeout=self.worker_timeout)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        """uint8 -> [-1, 1] floats on the device; random flips (``flip``) while training only."""
        images, rest = (batch[0], tuple(batch[1:])) if isinstance(batch, (tuple, list)) else (batch, None)
        flip = self.flip and self.trainer is not None and self.trainer.training
        flips = None
        if flip:  # drawn for the global batch, this rank's share taken, as for the training noise
            trainer, n = self.trainer, len(images)
            iteration = getattr(trainer.lightning_module, "iteration", trainer.global_step)
            generator = torch.Generator(images.device).manual_seed(self.seed * 1_000_003 + iteration + FLIP_STREAM)
            flips = torch.rand(n * trainer.world_size, generator=generator, device=images.device) < 0.5
            flips = flips[trainer.global_rank * n:(trainer.global_rank + 1) * n]
        x = to_model_input(images, flip, flips=flips)
        return x if rest is None else (x, *rest)

    def fixed_images(self, n: int) -> Tensor:
        """The first n held-out images (training images if there are too few), as model input."""
        self.setup()
        split = self.val_split if len(self.splits[self.val_split]) >= n else "train"
        rows = self.splits[split][:n]
        return to_model_input(torch.from_numpy(np.asarray(self.data.images[rows])))

    @property
    def attr_names(self) -> list[str]:
        self.setup()
        return [str(n) for n in self.data.arrays.get("attr_names", [])]

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return [str(n) for n in self.data.arrays.get("class_names", [])]


class CachedDataModule(ArrayDataModule):
    """A source on disk, decoded once into the cache (built in ``prepare_data``, on one process per node)."""

    def __init__(self, root: str | None = DataConfig.root, cache_dir: str | None = DataConfig.cache_dir,
                 cache_workers: int | None = DataConfig.cache_workers, on_bad_image: str = DataConfig.on_bad_image,
                 **kwargs):
        super().__init__(**kwargs)
        if on_bad_image not in ("error", "skip"):
            raise DataError(f"data.on_bad_image={on_bad_image!r}: use error or skip")
        self.root = None if root is None else str(Path(root).expanduser())
        self.cache_dir = None if cache_dir is None else str(Path(cache_dir).expanduser())
        self.cache_workers, self.on_bad_image = cache_workers, on_bad_image

    def source(self) -> Source:
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.setup()

    def load(self) -> ImageArrays:
        if self.root is None:
            raise DataError(f"data.root is not set: point it at the {self.source_name} data (see docs/data.md)")
        return load_or_build(self.source(), self.image_size, self.channels, self.cache_dir, self.cache_workers, self.on_bad_image)

    @property
    def source_name(self) -> str:
        return type(self).__name__.removesuffix("DataModule").lower()


class CelebADataModule(CachedDataModule):
    def __init__(self, crop: int | None = DataConfig.crop, verify_checksums: bool = DataConfig.verify_checksums, **kwargs):
        super().__init__(**kwargs)
        self.crop, self.verify_checksums = crop or 178, verify_checksums  # None: CelebA's 178 (conf/data/celeba.yaml)

    def source(self) -> Source:
        return CelebASource(self.root, self.crop, self.verify_checksums)


class CIFAR10DataModule(CachedDataModule):
    def __init__(self, download: bool = DataConfig.download, verify_checksums: bool = DataConfig.verify_checksums,
                 **kwargs):
        super().__init__(**kwargs)
        self.download, self.verify_checksums = download, verify_checksums

    def source(self) -> Source:
        return CIFAR10Source(self.root, self.download, self.verify_checksums)


class FolderDataModule(CachedDataModule):
    def __init__(self, crop: int | None = DataConfig.crop, **kwargs):
        super().__init__(**kwargs)
        self.crop = crop

    def source(self) -> Source:
        return FolderSource(self.root, self.crop)


class NpzDataModule(CachedDataModule):
    def source(self) -> Source:
        return NpzSource(self.root)


# ------------------------------------------------------------------------- offline, in memory
def load_digits_array(image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits, bilinearly resized to image_size: (N, S, S, C) uint8 and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # pixel values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(x, channels, axis=-1), digits.target.astype(np.int64)


class DigitsDataModule(ArrayDataModule):
    """scikit-learn's digits (shipped with the package, so the quickstart runs offline)."""

    def load(self) -> ImageArrays:
        images, labels = load_digits_array(self.image_size, self.channels)
        return ImageArrays(images, {"labels": labels, "class_names": np.array([str(d) for d in range(10)])})


class SyntheticDataModule(ArrayDataModule):
    """``length`` images of uniform uint8 noise from a seed: no I/O, for smoke tests and benchmarks."""

    def __init__(self, length: int = DataConfig.length, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def load(self) -> ImageArrays:
        shape = (self.length, self.image_size, self.image_size, self.channels)
        return ImageArrays(np.random.default_rng(self.seed).integers(0, 256, shape, dtype=np.uint8))


DATAMODULES: dict[str, type[ArrayDataModule]] = {
    "celeba": CelebADataModule, "cifar10": CIFAR10DataModule, "folder": FolderDataModule, "npz": NpzDataModule,
    "digits": DigitsDataModule, "synthetic": SyntheticDataModule,
}


def build_datamodule(name: str, **kwargs) -> ArrayDataModule:
    if name not in DATAMODULES:
        raise DataError(f"data={name!r} is not a data source; choose one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)

