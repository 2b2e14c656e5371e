"""The preprocessed cache: every image decoded, cropped and resized once, into a memory-mapped
uint8 array, with the per-image arrays (attributes, labels, split) beside it.

A cache is a directory ``<cache_dir>/<source>-<size>px-<channels>c-<hash of location + transform>/``:

- ``images.npy``  (N, S, S, C) uint8, opened with ``numpy.load(mmap_mode="r")``;
- ``arrays.npz``  attrs, labels, partition, identity, filenames, attr_names, class_names (those the source has);
- ``meta.json``   the key (source, location, content fingerprint, transform), its SHA-256, shape,
  a CRC-32 per chunk of rows, the images left out (``data.on_bad_image=skip``) and build statistics.

It is built in a hidden ``.partial-*`` directory and renamed into place only when complete, under
a file lock, so a killed build leaves nothing that looks complete and two runs never build the
same cache at once. Opening checks the key, the shape, the file size and CRCs (all of them when
the file's modification time changed, a sample otherwise); any mismatch means a rebuild.

A complete cache in a directory this process cannot write (a shared, read-only cache) is opened
without the lock and without writing anything. A build that cannot write (no permission, a full
disk) stops with one DataError naming the directory, and leaves any complete cache as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL

from vaegan.data.cache_fill import CHUNK_ROWS, console, crc_of_rows, fill_chunks
from vaegan.data.errors import DataError
from vaegan.data.sources import Source
from vaegan.utils.hashing import digest

VERSION = 2  # bump when the transform or the file format changes (2: 16-bit and transparent images)


@dataclass
class ImageArrays:
    """Decoded images (N, S, S, C) uint8 and their per-image arrays; ``excluded`` lists unreadable
    images (kept as black rows) that no split may use."""

    images: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    path: Path | None = None  # the cache directory, None for in-memory data


def cpu_count() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup-pinned jobs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaegan"


def cache_key(source: Source, size: int, channels: int) -> dict:
    transform = f"CenterCrop({source.crop or 'shorter side'}) + Resize({size}) bilinear, PIL {PIL.__version__}"
    return {"version": VERSION, "source": source.name, "location": source.location(), "size": size,
            "channels": channels, "transform": transform, "content": source.fingerprint()}


def cache_dir_for(cache_root: Path, key: dict) -> Path:
    where = digest({k: key[k] for k in ("version", "location", "transform", "channels")})[:12]
    return Path(cache_root) / f"{key['source']}-{key['size']}px-{key['channels']}c-{where}"


# ------------------------------------------------------------------------------------- opening
class StaleCache(Exception):
    """The cache exists but cannot be used; the message says why."""


def open_cache(path: Path, key: dict) -> ImageArrays | None:
    """The cache at ``path`` if it is complete and matches ``key``; None if absent; raises
    StaleCache naming the mismatch."""
    if not (path / "meta.json").exists():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StaleCache(f"meta.json unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise StaleCache("meta.json was edited (not a JSON object)")
    if meta.get("key_sha256") != digest(meta.get("key", {})):
        raise StaleCache("meta.json was edited (its key does not match its checksum)")
    if meta["key"] != key:
        changed = sorted(k for k in key if meta["key"].get(k) != key[k])
        raise StaleCache(f"built for different data or settings (changed: {', '.join(changed)})")
    file = path / "images.npy"
    try:
        images = np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:  # a truncated file fails here ("mmap length is greater than file size")
        raise StaleCache(f"images.npy unreadable ({err})") from None
    if images.dtype != np.uint8 or list(images.shape) != meta["shape"]:
        raise StaleCache(f"images.npy holds {images.dtype} {images.shape}, expected uint8 {tuple(meta['shape'])}")
    stat = file.stat()
    if stat.st_size != meta["images_bytes"]:
        raise StaleCache(f"images.npy has {stat.st_size} bytes, expected {meta['images_bytes']} (truncated?)")
    crcs = meta["chunk_crc32"]
    chunks = range(len(crcs))
    if stat.st_mtime_ns == meta["images_mtime_ns"] and crcs:  # untouched since the build: check a sample
        chunks = sorted({0, len(crcs) - 1, *np.random.default_rng().integers(0, len(crcs), 2).tolist()})
    for c in chunks:
        if crc_of_rows(images, c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS) != crcs[c]:
            raise StaleCache(f"images.npy rows {c * CHUNK_ROWS}-{(c + 1) * CHUNK_ROWS - 1} changed since the build (CRC mismatch)")
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise StaleCache(f"arrays.npz unreadable ({err})") from None
    excluded = np.array([b[0] for b in meta["excluded"]], dtype=np.int64)
    return ImageArrays(images, arrays, excluded, path)


# ------------------------------------------------------------------------------------- building
def human(nbytes: float) -> str:
    """A size for messages: 950 bytes, 147.5 kB, 2.5 MB, 12.3 GB."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000


def write_error(root: Path, err: OSError, nbytes: int) -> str:
    """One line: the cache directory that could not be written, why, and what to do."""
    why = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(root).free if root.is_dir() else 0
        fix = f"the cache needs {human(nbytes)}, {human(free)} are free: free space there or set data.cache_dir=<a folder with room>"
    elif err.errno == errno.EFBIG:
        fix = f"the file system (or ulimit -f) does not allow a {human(nbytes)} file: set data.cache_dir=<a folder on another file system>"
    else:
        fix = "set data.cache_dir=<a writable folder>"
    return f"cannot write the cache in {root} ({why}{f': {err.filename}' if err.filename else ''}); {fix}"


@contextlib.contextmanager
def writing(root: Path, nbytes: int):
    """Turn a failed write under ``root`` into a DataError naming it (the caller cleans up)."""
    try:
        yield
    except OSError as err:
        raise DataError(write_error(root, err, nbytes)) from None


def allocate(file: Path, shape: tuple[int, ...]) -> None:
    """Create images.npy with all its blocks reserved: on a full disk this fails here, with
    ENOSPC, instead of killing a worker with SIGBUS when it writes into a hole of the memory map."""
    np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape).flush()
    with open(file, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # not supported here: keep the sparse file
                raise


def all_skipped(source: Source, bad: list[tuple[int, str, str]]) -> str:
    _, name, reason = bad[0]
    return (f"all {len(source)} images of {source.location()} are unreadable and were skipped (data.on_bad_image=skip), "
            f"e.g. {name} ({reason}); point data.root at readable images")


def build_cache(path: Path, key: dict, source: Source, workers: int, on_bad_image: str) -> ImageArrays:
    """Decode every image of ``source`` into a new cache at ``path`` (replacing any stale one)."""
    size, channels = key["size"], key["channels"]
    arrays = source.arrays()  # parses and checks annotations before any decoding starts
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shape = (len(source), size, size, channels)
    root, nbytes = path.parent, int(np.prod(shape))
    shutil.rmtree(partial, ignore_errors=True)
    try:
        start = time.perf_counter()
        file = partial / "images.npy"
        with writing(root, nbytes):
            partial.mkdir(parents=True)
            allocate(file, shape)
        crcs, bad = fill_chunks(source, size, channels, file, workers, on_bad_image)
        if len(bad) == len(source):
            raise DataError(all_skipped(source, bad))
        seconds = time.perf_counter() - start
        with writing(root, nbytes):
            np.savez(partial / "arrays.npz", **arrays)
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            stat = file.stat()
            meta = {"key": key, "key_sha256": digest(key), "shape": list(shape),
                    "images_bytes": stat.st_size, "images_mtime_ns": stat.st_mtime_ns, "chunk_crc32": crcs,
                    "excluded": bad, "seconds": round(seconds, 2), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            stale = path.with_name(f".{path.name}.stale-{os.getpid()}")
            if path.exists():
                os.rename(path, stale)
            os.rename(partial, path)
        shutil.rmtree(stale, ignore_errors=True)  # after the new cache is in place: a failure here loses nothing
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    rate = len(source) / max(seconds, 1e-9)
    console.print(f"cached {len(source):,} {source.name} images at {size}x{size} in {seconds:.1f} s ({rate:,.0f} images/s) -> {path}")
    if bad:
        shown = "\n".join(f"  {name}: {reason}" for _, name, reason in bad[:10])
        console.print(f"[yellow]skipped {len(bad)} unreadable image(s) (data.on_bad_image=skip):\n{shown}")
    return open_cache(path, key)


class Unwritable(Exception):
    """The cache directory cannot be written, so it cannot be locked (the OSError is the argument)."""


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (waits while another process builds the cache);
    raises Unwritable when the lock file cannot be created or locked.

    A POSIX record lock (``lockf``), not ``flock``: forked build workers do not inherit it, so a
    killed build never leaves the lock held by orphaned workers."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")
    except OSError as err:
        raise Unwritable(err) from None
    with lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)
        except OSError as err:  # e.g. no lock support on this file system
            raise Unwritable(err) from None
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def open_read_only(path: Path, key: dict, err: OSError) -> ImageArrays:
    """The complete cache at ``path`` in a directory that cannot be written, read without writing
    anything (no other process can be building it there); or a DataError saying what to do."""
    try:
        cached = open_cache(path, key)
        state = "is not built yet"
    except StaleCache as why:
        cached, state = None, f"is stale or damaged ({why})"
    if cached is not None:
        return cached
    root = path.parent
    if root.exists() and not root.is_dir():
        raise DataError(f"the cache folder {root} is a file, not a folder; set data.cache_dir=<a writable folder>")
    raise DataError(f"the cache {path} {state} and {root} cannot be written ({err.strerror or err}); set "
                    f"data.cache_dir=<a writable folder>, or build the cache once with write access to {root}")


def load_or_build(source: Source, size: int, channels: int, cache_root: str | Path | None = None,
                  workers: int | None = None, on_bad_image: str = "error") -> ImageArrays:
    """Open the cache of ``source`` at ``size``, building (or rebuilding) it first if needed."""
    key = cache_key(source, size, channels)
    path = cache_dir_for(Path(cache_root) if cache_root else default_cache_dir(), key)
    try:
        with locked(path):
            try:
                cached = open_cache(path, key)
            except StaleCache as why:
                console.print(f"[yellow]cache {path} is stale or damaged: {why}; rebuilding it")
                cached = None
            if cached is None:
                for leftover in [*path.parent.glob(f".{path.name}.partial-*"), *path.parent.glob(f".{path.name}.stale-*")]:
                    shutil.rmtree(leftover, ignore_errors=True)  # from a killed build
                cached = build_cache(path, key, source, workers or cpu_count(), on_bad_image)
    except Unwritable as err:
        return open_read_only(path, key, err.args[0])
    return cached
