"""vaegan.data.cache where it cannot write: a complete cache in a read-only folder is used without
writing anything; a missing or stale one there, a failed write (no permission, a file size limit,
a full disk) or a build in which every image is unreadable is one DataError line naming the folder
and the fix, and leaves no partial or damaged cache behind."""

import errno
import multiprocessing as mp
import os
import resource
import signal
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import READ_ONLY_REASON, celeba_jpegs, read_only
from tests.data.test_cache import assert_matches_npz, cache_dirs, only_cache
from vaegan.data import DataError, FolderDataModule
from vaegan.data import cache as cache_module
from vaegan.data.cache import cache_dir_for, cache_key, load_or_build
from vaegan.data.sources import FolderSource

FORK = mp.get_context("fork")


def permissions_enforced() -> bool:
    """False as root, which ignores file permissions (unless its capability to was dropped)."""
    if os.geteuid() != 0:
        return True
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe")
        probe.touch(0o444)
        try:
            open(probe, "a").close()
        except PermissionError:
            return True
    return False


needs_permissions = pytest.mark.skipif(not permissions_enforced(), reason="root ignores file permissions (chmod); run as a normal user")


def image_folder(tmp_path: Path, n: int = 200) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for jpg in celeba_jpegs()[:n]:
        shutil.copyfile(jpg, folder / jpg.name)
    return folder


def folder_dm(folder: Path, cache: Path, size: int = 64) -> FolderDataModule:
    dm = FolderDataModule(root=str(folder), cache_dir=str(cache), image_size=size, batch_size=8, cache_workers=1)
    dm.setup()
    return dm


def snapshot(tree: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, modification time) of every entry under ``tree``, by relative path."""
    return {str(p.relative_to(tree)): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in [tree, *tree.rglob("*")]}


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """200 CelebA JPEGs in a folder and their 64x64 cache, built once; tests use copies of the cache."""
    tmp = tmp_path_factory.mktemp("built")
    folder = image_folder(tmp)
    folder_dm(folder, tmp / "cache")
    return folder, tmp / "cache"


# ------------------------------------------------------------------------------------ read-only folders
@pytest.mark.parametrize("lock_file", ["kept", "absent"])
def test_complete_cache_in_a_read_only_folder_is_used_without_writing(built, tmp_path, celeba_npz, monkeypatch, capfd, lock_file):
    folder, pristine = built
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    if lock_file == "absent":  # e.g. a cache copied to the shared folder without its lock file
        for lock in cache.glob("*.lock"):
            lock.unlink()
    monkeypatch.setattr(cache_module, "build_cache", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    capfd.readouterr()
    with read_only(cache):
        before = snapshot(cache)
        dm = folder_dm(folder, cache)
        batch = next(iter(dm.train_dataloader()))
        assert snapshot(cache) == before  # nothing created, changed or touched
    assert dm.data.path == only_cache(cache)
    assert_matches_npz(dm.data, celeba_npz(64))
    assert batch.shape == (8, 64, 64, 3)
    assert "stale" not in capfd.readouterr().err


def test_missing_cache_in_a_read_only_folder_says_where_to_build_it(tmp_path):
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache"
    cache.mkdir()
    path = cache_dir_for(cache, cache_key(FolderSource(folder), 16, 3))
    with read_only(cache), pytest.raises(DataError) as err:
        folder_dm(folder, cache, 16)
    assert one_line(err) == (
        f"the cache {path} is not built yet and {cache} cannot be written ({READ_ONLY_REASON}); "
        f"set data.cache_dir=<a writable folder>, or build the cache once with write access to {cache}"
    )
    assert not list(cache.iterdir())


def test_stale_cache_in_a_read_only_folder_is_kept_and_reported(tmp_path):
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache"
    path = folder_dm(folder, cache, 16).data.path
    shutil.copyfile(celeba_jpegs()[20], folder / celeba_jpegs()[20].name)  # an image added since the build
    with read_only(cache):
        before = snapshot(cache)
        with pytest.raises(DataError) as err:
            folder_dm(folder, cache, 16)
        assert snapshot(cache) == before
    assert one_line(err) == (
        f"the cache {path} is stale or damaged (built for different data or settings (changed: content)) and {cache} "
        f"cannot be written ({READ_ONLY_REASON}); set data.cache_dir=<a writable folder>, or build the cache once with "
        f"write access to {cache}"
    )


def test_cache_dir_that_is_a_file(tmp_path):
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache.txt"
    cache.write_text("not a folder")
    with pytest.raises(DataError) as err:
        folder_dm(folder, cache, 16)
    assert one_line(err) == f"the cache folder {cache} is a file, not a folder; set data.cache_dir=<a writable folder>"
    assert cache.read_text() == "not a folder"


# ------------------------------------------------------------------------------------ failed writes
@needs_permissions
def test_unwritable_cache_folder_with_a_writable_lock_file(tmp_path):
    """A shared folder whose lock file others may write, but not the folder: the build cannot start."""
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache"
    path = cache_dir_for(cache, cache_key(FolderSource(folder), 16, 3))
    cache.mkdir()
    path.with_name(path.name + ".lock").touch()
    cache.chmod(0o555)
    try:
        with pytest.raises(DataError) as err:
            folder_dm(folder, cache, 16)
    finally:
        cache.chmod(0o755)
    assert one_line(err).startswith(f"cannot write the cache in {cache} (Permission denied: {path.parent / ('.' + path.name)}.partial-")
    assert one_line(err).endswith("; set data.cache_dir=<a writable folder>")
    assert not cache_dirs(cache)


def build_under_file_size_limit(limit: int, conn, *args) -> None:
    """load_or_build(*args) with files limited to ``limit`` bytes (``ulimit -f``): the kernel fails
    larger writes with EFBIG, as a full disk fails them with ENOSPC. Sends back what happened."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the default action kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        load_or_build(*args)
        conn.send("built")
    except BaseException as err:  # noqa: BLE001 - the test wants to see whatever it was
        conn.send(f"{type(err).__name__}: {err}")


def test_write_beyond_the_file_size_limit_is_one_line_and_keeps_the_old_cache(tmp_path):
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache"
    path = folder_dm(folder, cache, 64).data.path
    before = snapshot(path)
    shutil.copyfile(celeba_jpegs()[20], folder / celeba_jpegs()[20].name)  # 13 images: the cache is stale
    mine, theirs = FORK.Pipe()
    child = FORK.Process(target=build_under_file_size_limit, args=(100_000, theirs, FolderSource(folder), 64, 3, cache, 1))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    message = mine.recv()
    assert message.startswith(f"DataError: cannot write the cache in {cache} (File too large"), message
    assert message.endswith("; the file system (or ulimit -f) does not allow a 159.7 kB file: "
                            "set data.cache_dir=<a folder on another file system>"), message
    assert "\n" not in message
    assert snapshot(path) == before  # the old cache is untouched
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no partial build left


def test_full_disk_is_one_line_naming_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    folder, cache = image_folder(tmp_path, 12), tmp_path / "cache"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module.os, "posix_fallocate", full)
    with pytest.raises(DataError) as err:
        folder_dm(folder, cache, 64)
    free = cache_module.human(shutil.disk_usage(cache).free)
    assert one_line(err) == (f"cannot write the cache in {cache} (No space left on device); the cache needs 147.5 kB, "
                             f"{free} are free: free space there or set data.cache_dir=<a folder with room>")
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_images_file_is_allocated_in_full(tmp_path):
    """Reserved blocks: a full disk fails the allocation, never a worker's write into the memory map."""
    file = tmp_path / "images.npy"
    cache_module.allocate(file, (100, 32, 32, 3))
    images = np.load(file, mmap_mode="r")
    assert images.shape == (100, 32, 32, 3) and not images.any()
    assert file.stat().st_blocks * 512 >= images.nbytes


# ------------------------------------------------------------------------------------ nothing readable
def test_every_image_unreadable_says_so(tmp_path):
    folder, cache = tmp_path / "images", tmp_path / "cache"
    folder.mkdir()
    (folder / "a.jpg").write_text("not an image")
    (folder / "b.png").write_bytes(celeba_jpegs()[0].read_bytes()[:500])
    dm = FolderDataModule(root=str(folder), cache_dir=str(cache), image_size=16, batch_size=1, on_bad_image="skip")
    with pytest.raises(DataError) as err:
        dm.setup()
    message = one_line(err)
    assert message.startswith(f"all 2 images of {folder.resolve()} are unreadable and were skipped (data.on_bad_image=skip), "
                              f"e.g. {folder / 'a.jpg'} (UnidentifiedImageError: ")
    assert message.endswith("; point data.root at readable images")
    assert "batch_size" not in message
    assert not cache_dirs(cache)
