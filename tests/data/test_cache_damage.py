"""Fast tests of ``vaegan.data.cache`` on a tiny synthetic npz: each kind of damage to a cache is
named by ``open_cache`` and the next open rebuilds it with the same pixels. (test_cache.py damages
real CelebA caches the same ways; those tests are slow.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vaegan.data import NpzDataModule
from vaegan.data import cache as cache_module
from vaegan.data.cache import cache_key, open_cache


def edit_key(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["key"]["size"] = 32
    (path / "meta.json").write_text(json.dumps(meta))


def truncate(path: Path) -> None:
    with open(path / "images.npy", "r+b") as f:
        f.truncate((path / "images.npy").stat().st_size - 100)


DAMAGE = {
    "meta.json not json": (lambda p: (p / "meta.json").write_text('{"key": '), r"meta\.json unreadable \("),
    "meta.json not an object": (lambda p: (p / "meta.json").write_text("[]"), r"meta\.json was edited \(not a JSON object\)"),
    "meta.json key edited": (edit_key, r"meta\.json was edited \(its key does not match its checksum\)"),
    "images.npy emptied": (lambda p: (p / "images.npy").write_bytes(b""), r"images\.npy unreadable \("),
    "images.npy truncated": (truncate, r"images\.npy (unreadable|has \d+ bytes, expected \d+ \(truncated\?\))"),
    "arrays.npz missing": (lambda p: (p / "arrays.npz").unlink(), r"arrays\.npz unreadable \("),
    "arrays.npz emptied": (lambda p: (p / "arrays.npz").write_bytes(b""), r"arrays\.npz unreadable \("),
}


@pytest.fixture
def npz_cache(tmp_path):
    """A 40-image 8x8 grey npz and its built cache: (datamodule factory, cache path, key, pixels)."""
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x)

    def dm() -> NpzDataModule:
        module = NpzDataModule(root=str(tmp_path / "d.npz"), cache_dir=str(tmp_path / "cache"), image_size=8, channels=1,
                               cache_workers=1)
        module.setup()
        return module

    first = dm()
    return dm, first.data.path, cache_key(first.source(), 8, 1), np.array(first.data.images)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_kind_of_damage_is_named_and_the_cache_rebuilt(npz_cache, damage, capfd):
    dm, path, key, pixels = npz_cache
    assert open_cache(path, key) is not None
    damage_fn, why = DAMAGE[damage]
    damage_fn(path)
    with pytest.raises(cache_module.StaleCache, match=why):
        open_cache(path, key)
    rebuilt = dm()
    out = capfd.readouterr()
    assert "is stale or damaged" in out.out + out.err and "rebuilding it" in out.out + out.err
    assert rebuilt.data.path == path and np.array_equal(np.array(rebuilt.data.images), pixels)
    assert open_cache(path, key) is not None  # whole again


def test_a_cache_of_other_settings_names_what_changed(npz_cache):
    _, path, key, _ = npz_cache
    with pytest.raises(cache_module.StaleCache, match=r"built for different data or settings \(changed: size\)"):
        open_cache(path, {**key, "size": 16})


def test_no_cache_yet_is_none(tmp_path):
    assert open_cache(tmp_path / "nothing", {}) is None
