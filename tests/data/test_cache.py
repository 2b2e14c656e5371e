"""vaegan.data.cache: the cached pixels are the documented transform's, a cache is reused, stale
or damaged caches are rebuilt, killed builds leave nothing complete, unreadable images are
reported or left out, and builds are serialised."""

import json
import multiprocessing as mp
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import celeba_jpegs, make_celeba_layout
from vaegan.data import CelebADataModule, DataError, FolderDataModule, NpzDataModule
from vaegan.data import cache as cache_module
from vaegan.data.cache import CHUNK_ROWS, cache_key, open_cache

FORK = mp.get_context("fork")


def celeba_dm(root: Path, cache: Path, size: int = 64, **kwargs) -> CelebADataModule:
    dm = CelebADataModule(root=str(root), cache_dir=str(cache), image_size=size, batch_size=8,
                          cache_workers=kwargs.pop("cache_workers", 2), **kwargs)
    dm.setup()
    return dm


def assert_matches_npz(data, npz: dict) -> None:
    """Every cached image equals the row of the shared array with the same file name."""
    rows = [npz["row"][str(name).rsplit("/", 1)[-1]] for name in data.arrays["filenames"]]
    assert data.images.shape == (len(rows), *npz["x"].shape[1:])
    diff = np.abs(data.images.astype(np.int16) - npz["x"][rows].astype(np.int16))
    assert diff.max() == 0, f"{int((diff.reshape(len(rows), -1).max(1) > 0).sum())} images differ"


def cache_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def only_cache(cache: Path) -> Path:
    dirs = cache_dirs(cache)
    assert len(dirs) == 1, dirs
    return dirs[0]


# ------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("size", [64, 128])
def test_cached_celeba_is_exactly_the_documented_transform(celeba_root, celeba_npz, tmp_path, size):
    dm = celeba_dm(celeba_root, tmp_path / "cache", size)
    npz = celeba_npz(size)
    assert isinstance(dm.data.images, np.memmap) and dm.data.images.dtype == np.uint8
    assert dm.data.images.shape == (200, size, size, 3)
    assert_matches_npz(dm.data, npz)
    rows = [npz["row"][str(n)] for n in dm.data.arrays["filenames"]]
    assert dm.data.arrays["filenames"].tolist() == [p.name for p in celeba_jpegs()]
    assert np.array_equal(dm.data.arrays["attrs"], npz["attrs"][rows])
    assert np.array_equal(dm.data.arrays["partition"], npz["partition"][rows])
    assert np.array_equal(dm.data.arrays["identity"], npz["identity"][rows])
    assert dm.data.arrays["attr_names"].tolist() == npz["attr_names"].tolist()
    assert only_cache(tmp_path / "cache").name.startswith(f"celeba-{size}px-3c-")


def test_second_open_reuses_the_cache(celeba_root, tmp_path, monkeypatch, capfd):
    first = celeba_dm(celeba_root, tmp_path / "cache")
    assert "cached 200 celeba images at 64x64" in capfd.readouterr().err
    meta = first.data.path / "meta.json"
    stamp = meta.stat().st_mtime_ns, meta.stat().st_ino

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache_module, "build_cache", no_rebuild)
    second = celeba_dm(celeba_root, tmp_path / "cache")
    assert second.data.path == first.data.path
    assert np.array_equal(second.data.images, first.data.images)
    assert (meta.stat().st_mtime_ns, meta.stat().st_ino) == stamp
    assert "cached" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------ staleness
def rebuilt(dm_factory, capfd, why: str):
    """Run dm_factory(), checking that it announced a stale cache (``why``, a regex) and built a new one."""
    capfd.readouterr()
    dm = dm_factory()
    err = capfd.readouterr().err
    assert "is stale or damaged" in err and re.search(why, err), err
    assert "cached " in err
    return dm


def test_adding_an_image_rebuilds(celeba_root, tmp_path, capfd, celeba_npz):
    first = celeba_dm(celeba_root, tmp_path / "cache")
    # a name the annotation files list but whose image is absent (3,820 of those)
    listed = [line.split()[0] for line in (celeba_root / "celeba" / "list_eval_partition.txt").read_text().splitlines()]
    extra = next(name for name in listed if name not in set(first.data.arrays["filenames"].tolist()))
    (celeba_root / "celeba" / "img_align_celeba" / extra).write_bytes(celeba_jpegs()[0].read_bytes())
    dm = rebuilt(lambda: celeba_dm(celeba_root, tmp_path / "cache"), capfd, r"changed: content\)")
    assert len(dm.data.images) == 201 and extra in dm.data.arrays["filenames"].tolist()
    assert dm.data.path == first.data.path
    i = dm.data.arrays["filenames"].tolist().index(extra)
    assert np.array_equal(dm.data.images[i], celeba_npz(64)["x"][celeba_npz(64)["row"][celeba_jpegs()[0].name]])


def test_removing_an_image_rebuilds(celeba_root, tmp_path, capfd):
    celeba_dm(celeba_root, tmp_path / "cache", 16)
    gone = celeba_jpegs()[7].name
    (celeba_root / "celeba" / "img_align_celeba" / gone).unlink()
    dm = rebuilt(lambda: celeba_dm(celeba_root, tmp_path / "cache", 16), capfd, r"changed: content\)")
    assert len(dm.data.images) == 199 and gone not in dm.data.arrays["filenames"].tolist()
    assert len(cache_dirs(tmp_path / "cache")) == 1


def test_editing_the_attribute_file_rebuilds(celeba_root, tmp_path, capfd):
    first = celeba_dm(celeba_root, tmp_path / "cache", 16)
    name = celeba_jpegs()[3].name
    before = first.data.arrays["attrs"][3].copy()
    path = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_bytes().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith(name.encode()))
    fields = lines[i].split()
    fields[1] = b"1" if fields[1] == b"-1" else b"-1"  # the first attribute of this image flips
    lines[i] = b" ".join(fields) + b"\r\n"
    path.write_bytes(b"".join(lines))
    dm = rebuilt(lambda: celeba_dm(celeba_root, tmp_path / "cache", 16), capfd, r"changed: content\)")
    after = dm.data.arrays["attrs"][3]
    assert after[0] == -before[0] and np.array_equal(after[1:], before[1:])


def test_changing_the_image_size_uses_another_cache(celeba_root, tmp_path, capfd):
    at16 = celeba_dm(celeba_root, tmp_path / "cache", 16)
    stamp = (at16.data.path / "meta.json").stat().st_mtime_ns
    at8 = celeba_dm(celeba_root, tmp_path / "cache", 8)
    assert "stale" not in capfd.readouterr().err
    assert at8.data.path != at16.data.path and at8.data.path.name.startswith("celeba-8px-3c-")
    assert {p.name for p in cache_dirs(tmp_path / "cache")} == {at16.data.path.name, at8.data.path.name}
    assert (at16.data.path / "meta.json").stat().st_mtime_ns == stamp
    assert at8.data.images.shape == (200, 8, 8, 3) and at16.data.images.shape == (200, 16, 16, 3)


# ------------------------------------------------------------------------------------ damage
def flip_byte(file: Path, row: int, keep_mtime: bool) -> None:
    images = np.load(file, mmap_mode="r")
    offset = images.offset + row * images[0].nbytes + images[0].nbytes // 2
    del images
    stat = file.stat()
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file.stat().st_size == stat.st_size


def truncate_images(path: Path) -> None:
    file = path / "images.npy"
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size - 1000)


def edit_meta_key(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["key"]["size"] = 32
    (path / "meta.json").write_text(json.dumps(meta))


CRC_MISMATCH = r"images\.npy rows 0-255 changed since the build \(CRC mismatch\)"  # 200 images: one chunk
DAMAGE = {  # name: (damage the cache directory, the reason the stale message must give)
    "truncated images.npy": (truncate_images, r"images\.npy (unreadable|has \d+ bytes)"),
    "byte flipped": (lambda p: flip_byte(p / "images.npy", 100, keep_mtime=False), CRC_MISMATCH),
    # the same size and modification time: only the (sampled) CRC check can see it
    "byte flipped, mtime restored": (lambda p: flip_byte(p / "images.npy", 199, keep_mtime=True), CRC_MISMATCH),
    "meta.json key edited": (edit_meta_key, r"meta\.json was edited \(its key does not match its checksum\)"),
    "meta.json not json": (lambda p: (p / "meta.json").write_text('{"key": '), r"meta\.json unreadable"),
    "arrays.npz missing": (lambda p: (p / "arrays.npz").unlink(), r"arrays\.npz unreadable"),
}


DAMAGE.update({
    "images.npy emptied": (lambda p: (p / "images.npy").write_bytes(b""), r"images\.npy unreadable"),
    "arrays.npz truncated": (lambda p: (p / "arrays.npz").write_bytes((p / "arrays.npz").read_bytes()[:-30]), r"arrays\.npz unreadable"),
    "arrays.npz emptied": (lambda p: (p / "arrays.npz").write_bytes(b""), r"arrays\.npz unreadable"),
    "meta.json not an object": (lambda p: (p / "meta.json").write_text("[]"), r"meta\.json was edited \(not a JSON object\)"),
})
DAMAGE_CASES = [pytest.param(name, id=name) for name in DAMAGE]


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory):
    """A CelebA layout and its 64x64 cache, built once; tests damage copies of the cache."""
    tmp = tmp_path_factory.mktemp("pristine")
    root = make_celeba_layout(tmp / "data")
    celeba_dm(root, tmp / "cache")
    return root, tmp / "cache"


@pytest.mark.parametrize("damage", DAMAGE_CASES)
@pytest.mark.slow
def test_damaged_cache_is_detected_and_rebuilt(pristine_cache, tmp_path, capfd, celeba_npz, damage):
    celeba_root, pristine = pristine_cache
    shutil.copytree(pristine, tmp_path / "cache")
    path = only_cache(tmp_path / "cache")
    inode = (path / "meta.json").stat().st_ino
    damage_fn, why = DAMAGE[damage]
    damage_fn(path)
    dm = rebuilt(lambda: celeba_dm(celeba_root, tmp_path / "cache"), capfd, f"cache {re.escape(str(path))} is stale or damaged: {why}")
    assert dm.data.path == path and (path / "meta.json").stat().st_ino != inode
    assert_matches_npz(dm.data, celeba_npz(64))


def test_sampled_check_always_covers_first_and_last_chunk(tmp_path):
    """With the modification time kept, only a sample of chunks is checked: the first and the last always."""
    n = 4 * CHUNK_ROWS + 10  # five chunks
    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x)
    dm = NpzDataModule(root=str(tmp_path / "d.npz"), cache_dir=str(tmp_path / "cache"), image_size=8, channels=1, cache_workers=1)
    dm.setup()
    path, key = dm.data.path, cache_key(dm.source(), 8, 1)
    assert len(json.loads((path / "meta.json").read_text())["chunk_crc32"]) == 5
    for row, chunk in [(3, 0), (n - 1, 4)]:
        flip_byte(path / "images.npy", row, keep_mtime=True)
        with pytest.raises(cache_module.StaleCache, match=f"rows {chunk * CHUNK_ROWS}-{(chunk + 1) * CHUNK_ROWS - 1} changed"):
            open_cache(path, key)
        flip_byte(path / "images.npy", row, keep_mtime=True)  # undo
        assert open_cache(path, key) is not None
    flip_byte(path / "images.npy", 2 * CHUNK_ROWS, keep_mtime=False)  # a new mtime: every chunk is checked
    with pytest.raises(cache_module.StaleCache, match=f"rows {2 * CHUNK_ROWS}-{3 * CHUNK_ROWS - 1} changed"):
        open_cache(path, key)


@pytest.fixture
def folder_with_bad_images(tmp_path) -> tuple[Path, list[str]]:
    folder = tmp_path / "images"
    folder.mkdir()
    jpgs = celeba_jpegs()[:12]
    for jpg in jpgs:
        (folder / jpg.name).write_bytes(jpg.read_bytes())
    (folder / "100000_truncated.jpg").write_bytes(jpgs[0].read_bytes()[:2000])
    (folder / "100001_text.jpg").write_text("this is not an image\n")
    return folder, ["100000_truncated.jpg", "100001_text.jpg"]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_image_is_an_error_by_default(folder_with_bad_images, tmp_path, workers):
    folder, bad = folder_with_bad_images
    dm = FolderDataModule(root=str(folder), cache_dir=str(tmp_path / "cache"), image_size=16, batch_size=2, cache_workers=workers)
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert f"unreadable image {folder / bad[0]}" in message
    assert "data.on_bad_image=skip" in message
    assert not cache_dirs(tmp_path / "cache")  # nothing complete, no partial directory left


def test_bad_images_are_skipped_and_left_out_of_every_split(folder_with_bad_images, tmp_path, capfd):
    folder, bad = folder_with_bad_images
    kwargs = dict(root=str(folder), cache_dir=str(tmp_path / "cache"), image_size=16, batch_size=2, cache_workers=2,
                  on_bad_image="skip", val_fraction=0.25)
    dm = FolderDataModule(**kwargs)
    dm.setup()
    err = capfd.readouterr().err
    assert "skipped 2 unreadable image(s) (data.on_bad_image=skip)" in err
    assert all(str(folder / name) in err for name in bad)
    files = dm.data.arrays["filenames"].tolist()
    bad_rows = [files.index(name) for name in bad]
    assert dm.data.excluded.tolist() == bad_rows
    assert not dm.data.images[bad_rows].any()  # kept as black rows
    used = np.concatenate(list(dm.splits.values()))
    assert not set(bad_rows) & set(used.tolist())
    assert sorted(used.tolist()) == sorted(set(range(14)) - set(bad_rows))
    meta = json.loads((dm.data.path / "meta.json").read_text())
    assert [b[0] for b in meta["excluded"]] == bad_rows

    reopened = FolderDataModule(**kwargs)
    reopened.setup()
    assert "cached" not in capfd.readouterr().err  # the cache is reused and still excludes them
    assert reopened.data.excluded.tolist() == bad_rows
    assert all(not set(bad_rows) & set(s.tolist()) for s in reopened.splits.values())


def test_bad_celeba_image_is_left_out_of_its_partition(celeba_root, tmp_path, capfd):
    victim = celeba_jpegs()[10]
    (celeba_root / "celeba" / "img_align_celeba" / victim.name).write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(DataError, match=f"unreadable image .*{victim.name}"):
        celeba_dm(celeba_root, tmp_path / "cache", 16)
    dm = celeba_dm(celeba_root, tmp_path / "cache", 16, on_bad_image="skip")
    assert dm.data.excluded.tolist() == [10]
    assert sum(len(s) for s in dm.splits.values()) == 199
    assert all(10 not in s for s in dm.splits.values())
    part = dm.data.arrays["partition"]
    for name, code in {"train": 0, "valid": 1, "test": 2}.items():
        assert np.all(part[dm.splits[name]] == code)
