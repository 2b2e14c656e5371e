"""Filling a cache's images.npy: the images decoded chunk by chunk, in worker processes or in this
one, each chunk's CRC-32 returned for meta.json, unreadable images reported (``vaegan.data.cache``
builds, checks and opens the cache around this)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vaegan.data.errors import DataError
from vaegan.data.sources import Source

CHUNK_ROWS = 256  # images per work item and per CRC
console = Console(stderr=True, soft_wrap=True)


def crc_of_rows(images: np.ndarray, start: int, stop: int) -> int:
    return zlib.crc32(np.ascontiguousarray(images[start:stop]).data)


_worker: dict = {}


def _init_worker(source: Source, size: int, channels: int, file: str, parent: int | None = None) -> None:
    _worker.update(source=source, size=size, channels=channels, file=file)
    if parent is not None:  # a worker process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the pool
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()  # else a SIGKILLed parent's
        # workers outlive it, blocked on their queue


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


def fill_chunks(source: Source, size: int, channels: int, file: Path, workers: int, on_bad_image: str):
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
            others = set(mp.active_children())
            with ProcessPoolExecutor(min(workers, n_chunks), context, _init_worker, initargs) as pool:
                pending = {pool.submit(_fill_chunk, c) for c in range(n_chunks)}
                try:
                    while pending:  # with a timeout, so that a Ctrl-C delivered to another thread is seen at once
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        for future in done:
                            collect(*future.result())
                except BrokenProcessPool:
                    raise DataError(f"a cache worker process died (out of memory?); lower data.cache_workers (now {workers})") from None
                except BaseException:  # Ctrl-C, or a bad image: stop the workers now, not after their chunks
                    pool.shutdown(wait=False, cancel_futures=True)
                    for worker in set(mp.active_children()) - others:
                        worker.terminate()
                    raise
    return crcs, sorted(bad)
