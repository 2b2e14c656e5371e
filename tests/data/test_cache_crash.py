"""vaegan.data.cache under crashes and concurrency: a killed build (in-process or with worker
processes) leaves nothing that is taken as complete and never blocks the next build, and
concurrent builds of one cache run once."""

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import celeba_jpegs
from tests.data.test_cache import assert_matches_npz, cache_dirs
from vaegan.data.cache import cache_dir_for, cache_key, load_or_build, open_cache
from vaegan.data.sources import FolderSource

FORK = mp.get_context("fork")


# ------------------------------------------------------------------------------------ killed builds
class SlowFolder(FolderSource):
    """A folder source whose reads take ``delay`` seconds each (its cache is the plain folder's)."""

    delay = 0.05

    def read(self, i, size, channels):
        time.sleep(self.delay)
        return super().read(i, size, channels)


def build_slowly(root: str, cache: str, size: int, workers: int, delay: float) -> None:
    source = SlowFolder(root)
    source.delay = delay
    load_or_build(source, size, 3, cache, workers)


def descendants_of(pid: int) -> list[int]:
    """The processes started, directly or not, by process ``pid`` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def partials(cache: Path) -> list[Path]:
    return list(cache.glob(".*.partial-*"))


def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for jpg in celeba_jpegs():
        (folder / jpg.name).write_bytes(jpg.read_bytes())
    return folder


def test_killed_build_leaves_nothing_complete(tmp_path, celeba_npz):
    folder, cache = image_folder(tmp_path), tmp_path / "cache"
    child = FORK.Process(target=build_slowly, args=(str(folder), str(cache), 64, 1, 0.05))
    child.start()
    try:
        wait_for(lambda: any((p / "images.npy").exists() for p in partials(cache)))
        time.sleep(0.5)  # some rows written
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    [leftover] = partials(cache)
    assert leftover.name.endswith(f".partial-{child.pid}")
    key = cache_key(FolderSource(folder), 64, 3)
    path = cache_dir_for(cache, key)
    assert leftover.name == f".{path.name}.partial-{child.pid}"
    assert open_cache(path, key) is None and not path.exists()

    data = load_or_build(FolderSource(folder), 64, 3, cache, workers=2)
    assert data.path == path and (path / "meta.json").is_file()
    assert not partials(cache)  # the leftover is gone
    assert_matches_npz(data, celeba_npz(64))


def test_killed_parallel_build_does_not_block_the_next_build(tmp_path):
    folder, cache = image_folder(tmp_path), tmp_path / "cache"
    child = FORK.Process(target=build_slowly, args=(str(folder), str(cache), 16, 2, 0.05))
    child.start()
    workers, retry = [], None
    try:
        wait_for(lambda: any((p / "images.npy").exists() for p in partials(cache)))
        time.sleep(0.5)  # the pool is up and decoding
        workers = descendants_of(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        retry = FORK.Process(target=load_or_build, args=(FolderSource(folder), 16, 3, cache, 2))
        retry.start()
        retry.join(timeout=3)  # returns as soon as the build is done (well under a second)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        assert retry.exitcode == 0, f"the next build is still waiting for the lock; orphaned cache workers: {alive}"
    finally:
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        for pid in workers:  # the orphaned pool workers of the killed build (started by this test)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if retry is not None:
            retry.join(timeout=10)
            if retry.exitcode is None:
                os.kill(retry.pid, signal.SIGKILL)
                retry.join()


def test_concurrent_builds_are_serialised(tmp_path, capfd, celeba_npz):
    folder, cache = image_folder(tmp_path), tmp_path / "cache"
    capfd.readouterr()
    runs = [FORK.Process(target=build_slowly, args=(str(folder), str(cache), 64, 1, 0.004)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert [run.exitcode for run in runs] == [0, 0]
    err = capfd.readouterr().err
    assert err.count("cached 200 folder images at 64x64") == 1, err  # the second waited, then opened it
    assert not partials(cache) and len(cache_dirs(cache)) == 1
    key = cache_key(FolderSource(folder), 64, 3)
    assert_matches_npz(open_cache(cache_dir_for(cache, key), key), celeba_npz(64))


# ------------------------------------------------------------------------------------ bad images


@pytest.mark.slow
def test_ctrl_c_during_a_build_with_workers_stops_it_at_once(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while worker processes decode:
    the command stops within seconds with one line, and leaves no partial cache behind."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    images = tmp_path / "images"
    images.mkdir()
    for jpeg in celeba_jpegs()[:64]:
        os.symlink(jpeg, images / jpeg.name)
    slow = ("import sys, time, runpy; from vaegan.data import sources; read = sources.FolderSource.read; "
            "sources.FolderSource.read = lambda self, *a: (time.sleep(0.2), read(self, *a))[1]; "
            "sys.argv = ['vaegan.run', *sys.argv[1:]]; runpy.run_module('vaegan.run', run_name='__main__')")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", slow, "+experiment=quickstart", "data=folder", f"data.root={images}",
                             f"data.cache_dir={cache}", "data.cache_workers=2", "data.image_size=16",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob(".*partial*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.02)
    time.sleep(1.0)  # the workers are decoding (64 images x 0.2 s / 2 workers: about 6 s in all)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert err.strip().splitlines()[-1] == "Interrupted: Ctrl-C before training started; nothing was trained or saved"
    assert time.monotonic() - sent < 4
    assert not [p for p in cache.iterdir() if p.is_dir()]  # neither a partial build nor a cache taken as complete
