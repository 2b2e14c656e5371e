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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
import threading
import zipfile
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vaegan.data.errors import DataError
from vaegan.data.sources import Source

VERSION = 1  # bump when the transform or the file format changes
CHUNK_ROWS = 256  # images per work item and per CRC
console = Console(stderr=True, soft_wrap=True)


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


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_dir_for(cache_root: Path, key: dict) -> Path:
    where = digest({k: key[k] for k in ("version", "location", "transform", "channels")})[:12]
    return Path(cache_root) / f"{key['source']}-{key['size']}px-{key['channels']}c-{where}"


# ------------------------------------------------------------------------------------- opening
class StaleCache(Exception):
    """The cache exists but cannot be used; the message says why."""


def crc_of_rows(images: np.ndarray, start: int, stop: int) -> int:
    return zlib.crc32(np.ascontiguousarray(images[start:stop]).data)


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
_worker: dict = {}


def _init_worker(source: Source, size: int, channels: int, file: str, parent: int | None = None) -> None:
    _worker.update(source=source, size=size, channels=channels, file=file)
    if parent is not None:  # a worker outlives a SIGKILLed parent otherwise, blocked on its queue
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _fill_chunk(chunk: int) -> tuple[int, int, list[tuple[int, str, str]]]:
    """Decode the images of one chunk into the partial images.npy; unreadable ones stay black."""
    source, size, channels = _worker["source"], _worker["size"], _worker["channels"]
    images = np.load(_worker["file"], mmap_mode="r+")
    bad = []
    start, stop = chunk * CHUNK_ROWS, min((chunk + 1) * CHUNK_ROWS, len(images))
    for i in range(start, stop):
        try:
            images[i] = source.read(i, size, channels)
        except Exception as err:  # any decoder failure: report the file, never crash the worker
            bad.append((i, source.describe(i), f"{type(err).__name__}: {err}"))
    images.flush()
    return chunk, crc_of_rows(images, start, stop), bad


def _run_chunks(source: Source, size: int, channels: int, file: Path, workers: int, on_bad_image: str):
    """Fill every chunk, in ``workers`` processes (or in this one), with a progress bar."""
    n_chunks = -(-len(source) // CHUNK_ROWS)
    crcs, bad = [0] * n_chunks, []
    progress = Progress(TextColumn(f"[bold]caching {source.name} at {size}x{size}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("images"), TimeRemainingColumn(), console=console, transient=True,
                        disable=not console.is_terminal)
    task = progress.add_task("cache", total=len(source))

    def collect(chunk: int, crc: int, chunk_bad: list) -> None:
        crcs[chunk] = crc
        bad.extend(chunk_bad)
        if chunk_bad and on_bad_image == "error":
            i, name, reason = chunk_bad[0]
            raise DataError(f"unreadable image {name} ({reason}). Replace or delete the file, or set data.on_bad_image=skip to leave such images out")
        progress.advance(task, min(CHUNK_ROWS, len(source) - chunk * CHUNK_ROWS))

    with progress:
        if workers <= 1:
            _init_worker(source, size, channels, str(file))
            for c in range(n_chunks):
                collect(*_fill_chunk(c))
        else:
            context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            initargs = (source, size, channels, str(file), os.getpid())
            with ProcessPoolExecutor(min(workers, n_chunks), context, _init_worker, initargs) as pool:
                pending = {pool.submit(_fill_chunk, c) for c in range(n_chunks)}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            collect(*future.result())
                except BrokenProcessPool:
                    raise DataError(f"a cache worker process died (out of memory?); lower data.cache_workers (now {workers})") from None
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    return crcs, sorted(bad)


def build_cache(path: Path, key: dict, source: Source, workers: int, on_bad_image: str) -> ImageArrays:
    """Decode every image of ``source`` into a new cache at ``path`` (replacing any stale one)."""
    size, channels = key["size"], key["channels"]
    arrays = source.arrays()  # parses and checks annotations before any decoding starts
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        start = time.perf_counter()
        file = partial / "images.npy"
        np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(len(source), size, size, channels)).flush()
        crcs, bad = _run_chunks(source, size, channels, file, workers, on_bad_image)
        seconds = time.perf_counter() - start
        np.savez(partial / "arrays.npz", **arrays)
        with open(file, "rb+") as f:
            os.fsync(f.fileno())
        stat = file.stat()
        meta = {"key": key, "key_sha256": digest(key), "shape": [len(source), size, size, channels],
                "images_bytes": stat.st_size, "images_mtime_ns": stat.st_mtime_ns, "chunk_crc32": crcs,
                "excluded": bad, "seconds": round(seconds, 2), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        if path.exists():
            stale = path.with_name(f".{path.name}.stale-{os.getpid()}")
            os.rename(path, stale)
            shutil.rmtree(stale)
        os.rename(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    rate = len(source) / max(seconds, 1e-9)
    console.print(f"cached {len(source):,} {source.name} images at {size}x{size} in {seconds:.1f} s ({rate:,.0f} images/s) -> {path}")
    if bad:
        shown = "\n".join(f"  {name}: {reason}" for _, name, reason in bad[:10])
        console.print(f"[yellow]skipped {len(bad)} unreadable image(s) (data.on_bad_image=skip):\n{shown}")
    return open_cache(path, key)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``<path>.lock`` (waits while another process builds the cache).

    A POSIX record lock (``lockf``), not ``flock``: forked build workers do not inherit it, so a
    killed build never leaves the lock held by orphaned workers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def load_or_build(source: Source, size: int, channels: int, cache_root: str | Path | None = None,
                  workers: int | None = None, on_bad_image: str = "error") -> ImageArrays:
    """Open the cache of ``source`` at ``size``, building (or rebuilding) it first if needed."""
    key = cache_key(source, size, channels)
    path = cache_dir_for(Path(cache_root) if cache_root else default_cache_dir(), key)
    with locked(path):
        try:
            cached = open_cache(path, key)
        except StaleCache as why:
            console.print(f"[yellow]cache {path} is stale or damaged: {why}; rebuilding it")
            cached = None
        if cached is None:
            for leftover in path.parent.glob(f".{path.name}.partial-*"):  # from a killed build
                shutil.rmtree(leftover, ignore_errors=True)
            cached = build_cache(path, key, source, workers or cpu_count(), on_bad_image)
    return cached
