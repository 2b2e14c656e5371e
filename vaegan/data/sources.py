"""Datasets on disk: which images there are, how to read one, and what lies beside them.

A ``Source`` knows nothing about batches or caches. It lists its images, reads image ``i`` as a
crop-and-resized uint8 array (raising on a bad file), fingerprints its content (so a cache can
tell when it is stale) and returns its per-image arrays: ``attrs`` (CelebA's 40 attributes in the
official {-1, +1} encoding), ``labels``, ``partition`` (0 train, 1 valid, 2 test), ``identity``
and ``filenames``. Layout and consistency errors are raised here, before any work starts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from vaegan.data.errors import DataError
from vaegan.data.transforms import crop_and_resize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PARTITIONS = {"train": 0, "valid": 1, "test": 2}




def file_list_digest(root: Path, names: list[str]) -> str:
    """A digest of relative names and sizes: changes when a file is added, removed or replaced."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\t{(root / name).stat().st_size}\n".encode())
    return digest.hexdigest()


class Source:
    """Base class: ``name``, ``__len__``, ``describe(i)``, ``read(i, size, channels)``,
    ``fingerprint()`` and ``arrays()``."""

    name = "source"
    crop: int | None = None  # CenterCrop size of the documented transform (None: the shorter side)

    def __len__(self) -> int:
        raise NotImplementedError

    def location(self) -> str:
        """Where the data lives (names the cache directory)."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """The file behind image i, for messages."""
        return f"{self.location()}[{i}]"

    def read(self, i: int, size: int, channels: int) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-image arrays (``attrs``, ``labels``, ...) and name lists (``attr_names``, ``class_names``)."""
        return {}


class FileSource(Source):
    """Images stored as files under ``root``, one per entry of ``self.files`` (relative paths)."""

    root: Path
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def location(self) -> str:
        return str(self.root.resolve())

    def describe(self, i: int) -> str:
        return str(self.root / self.files[i])

    def read(self, i: int, size: int, channels: int) -> np.ndarray:
        with Image.open(self.root / self.files[i]) as img:
            return crop_and_resize(img, size, self.crop, channels)


def list_images(root: Path) -> list[str]:
    """The image files under ``root`` (relative paths, sorted; symlinked folders are not entered).
    A folder that cannot be listed is a DataError: skipping it would silently drop its images."""

    def unlistable(err: OSError) -> None:
        raise DataError(f"data=folder: cannot list {err.filename} ({err.strerror}); make it readable "
                        f"(chmod -R u+rX {err.filename}) or move it out of data.root")

    return sorted(
        str(path.relative_to(root))
        for folder, _, names in os.walk(root, onerror=unlistable)
        for path in (Path(folder, name) for name in names)
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


class FolderSource(FileSource):
    """Every image under ``root``, recursively. When all images sit in subfolders, the first
    subfolder under ``root`` is the class (as in torchvision's ImageFolder)."""

    name = "folder"

    def __init__(self, root: str | Path, crop: int | None = None):
        self.root, self.crop = Path(root), crop
        if not self.root.is_dir():
            what = "not a directory"
            if self.root.is_file():
                what = "a file, not a folder" + (" (for an .npz file use data=npz)" if self.root.suffix == ".npz" else "")
            raise DataError(f"data=folder: data.root={root} is {what}; point data.root at a folder of images ({', '.join(IMAGE_EXTENSIONS)}, any depth)")
        self.files = list_images(self.root)
        if not self.files:
            raise DataError(f"data=folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")

    def fingerprint(self) -> dict:
        return {"images": file_list_digest(self.root, self.files), "count": len(self.files)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"filenames": np.array(self.files)}
        parts = [Path(f).parts for f in self.files]
        if all(len(p) > 1 for p in parts):
            classes = sorted({p[0] for p in parts})
            out["class_names"] = np.array(classes)
            out["labels"] = np.array([classes.index(p[0]) for p in parts], dtype=np.int64)
        return out


# --------------------------------------------------------------------------------------- arrays
class ArraySource(Source):
    """Images already decoded into a uint8 array (N, H, W, C)."""

    x: np.ndarray  # (N, H, W, C) uint8

    def __len__(self) -> int:
        return len(self.x)

    def read(self, i: int, size: int, channels: int) -> np.ndarray:
        img = self.x[i]
        if img.shape == (size, size, channels):
            return img
        return crop_and_resize(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), size, None, channels)


class NpzSource(ArraySource):
    """A NumPy file with ``x`` uint8 (N, H, W, C) and optional per-image ``attrs``, ``y`` (labels),
    ``partition``, ``identity``, ``filenames`` and name lists ``attr_names``, ``class_names``."""

    name = "npz"
    PER_IMAGE = {"attrs": "attrs", "y": "labels", "labels": "labels", "partition": "partition", "identity": "identity", "filenames": "filenames"}

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data=npz: data.root={path} is not a file; point data.root at an .npz holding a uint8 array x (N, H, W, C)")

    @cached_property
    def contents(self) -> dict[str, np.ndarray]:
        """Every array of the file, checked (decompressing takes a while; only needed to build the cache)."""
        self.check_format()
        try:
            with np.load(self.path, allow_pickle=False) as f:
                contents = {key: f[key] for key in f.files}
        except Exception as err:  # zip errors, truncated files, object arrays
            raise DataError(f"data=npz: cannot read {self.path} ({err}); is it a complete numpy.savez file?") from None
        x = contents.get("x")
        if x is None or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            got = "no array x" if x is None else f"x {x.dtype} {x.shape}"
            raise DataError(f"data=npz: {self.path} has {got} (keys: {sorted(contents)}); it needs x: uint8 (N, H, W, C) with C = 1 or 3")
        if len(x) == 0:
            raise DataError(f"data=npz: {self.path}: x holds no images")
        for key in self.PER_IMAGE:
            if key in contents and len(contents[key]) != len(x):
                raise DataError(f"data=npz: {self.path}: {key} has {len(contents[key])} rows but x has {len(x)} images")
        return contents

    def check_format(self) -> None:
        """A DataError unless the file starts like a zip archive (what numpy.savez writes)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except OSError as err:
            raise DataError(f"data=npz: cannot read {self.path} ({err.strerror}); make it a readable file") from None
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            return
        if head.startswith(b"\x93NUMPY"):
            raise DataError(f"data=npz: {self.path} is a .npy file (one array), not an .npz archive; "
                            "write the images with numpy.savez(file, x=images) and point data.root at that file")
        size = self.path.stat().st_size
        what = "is empty" if not head else f"starts with {head!r} ({size:,} bytes)"
        raise DataError(f"data=npz: {self.path} is not an .npz archive: it {what}; "
                        "write the images with numpy.savez(file, x=images) and point data.root at that file")

    @property
    def x(self) -> np.ndarray:
        return self.contents["x"]

    def location(self) -> str:
        return str(self.path.resolve())

    def fingerprint(self) -> dict:
        stat = self.path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {self.PER_IMAGE[k]: v for k, v in self.contents.items() if k in self.PER_IMAGE}
        out.update({k: self.contents[k] for k in ("attr_names", "class_names") if k in self.contents})
        if "partition" in out and not set(np.unique(out["partition"]).tolist()) <= {0, 1, 2}:
            raise DataError(f"data=npz: {self.path}: partition must hold 0 (train), 1 (valid) or 2 (test)")
        return out


CIFAR10_LAYOUT = """\
  <data.root>/cifar-10-batches-py/data_batch_1 ... data_batch_5
  <data.root>/cifar-10-batches-py/test_batch
  <data.root>/cifar-10-batches-py/batches.meta"""


class CIFAR10Source(ArraySource):
    """CIFAR-10's python batches: 50,000 train and 10,000 test images at 32x32, labels 0-9.
    Official files are read through torchvision (which checks their MD5); other copies (subsets,
    re-made batches) are read directly, with a warning."""

    name = "cifar10"

    def __init__(self, root: str | Path, download: bool = False, verify_checksums: bool = False):
        from torchvision.datasets import CIFAR10

        self.root = Path(root)
        self.folder = self.root / CIFAR10.base_folder
        files = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        missing = [f for f in files if not (self.folder / f).is_file()]
        if missing and download:
            from vaegan.data.download import download_cifar10

            download_cifar10(self.root)
            missing = [f for f in files if not (self.folder / f).is_file()]
        if missing:
            raise DataError(
                f"data=cifar10: {self.folder / missing[0]} not found (data.root={root}).\nExpected layout:\n{CIFAR10_LAYOUT}\n"
                f"Get it with data.download=true (needs internet), or download {CIFAR10.url} and untar it into <data.root>."
            )
        self.verify = verify_checksums

    @cached_property
    def x(self) -> np.ndarray:
        """Loads all six batches (about a second); only needed when the cache is built."""
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import check_integrity

        batches = CIFAR10.train_list + CIFAR10.test_list
        if all(check_integrity(str(self.folder / name), md5) for name, md5 in batches):
            parts = [CIFAR10(str(self.root), train=train, download=False) for train in (True, False)]
            x = np.concatenate([p.data for p in parts])
            labels = [np.asarray(p.targets) for p in parts]
            self.class_names = list(parts[0].classes)
        else:
            if self.verify:
                raise DataError(f"data=cifar10: the files in {self.folder} differ from the official MD5s; set data.verify_checksums=false to use them anyway")
            warnings.warn(f"{self.folder}: not the official CIFAR-10 files (MD5 differs); reading them directly", stacklevel=2)
            read = [self.read_batch(self.folder / name) for name, _ in batches]
            x = np.concatenate([b[0] for b in read])
            labels = [np.concatenate([b[1] for b in read[:-1]]), read[-1][1]]
            meta = self.unpickle(self.folder / CIFAR10.meta["filename"])
            self.class_names = [n.decode() if isinstance(n, bytes) else n for n in meta["label_names"]]
        self.labels = np.concatenate(labels).astype(np.int64)
        self.partition = np.concatenate([np.zeros(len(labels[0]), np.int8), np.full(len(labels[1]), 2, np.int8)])
        return x

    @staticmethod
    def unpickle(path: Path) -> dict:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")  # the format is a pickle; trust only real CIFAR-10 files
        except Exception as err:
            raise DataError(f"data=cifar10: cannot read {path} ({err}); re-download it (data.download=true)") from None
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}

    def read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        batch = self.unpickle(path)
        data, labels = np.asarray(batch.get("data")), np.asarray(batch.get("labels", batch.get("fine_labels")))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"data=cifar10: {path} is not a CIFAR-10 batch (data {data.dtype} {data.shape}, {len(labels)} labels)")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def location(self) -> str:
        return str(self.folder.resolve())

    def fingerprint(self) -> dict:
        return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(self.folder.iterdir()) if p.is_file()}

    def arrays(self) -> dict[str, np.ndarray]:
        self.x  # loads labels and class names too
        return {"labels": self.labels, "partition": self.partition, "class_names": np.array(self.class_names)}
