"""Tests of ``vaegan.utils.files``: atomic writes and the writability check."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from tests.conftest import READ_ONLY_REASON
from vaegan.utils.files import nearest_existing, unwritable, write_atomic, write_npz


def leftovers(folder):
    """Temporary files write_atomic may have left beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_nearest_existing_walks_up_to_an_existing_ancestor(tmp_path):
    assert nearest_existing(tmp_path) == tmp_path
    assert nearest_existing(tmp_path / "a" / "b" / "c.txt") == tmp_path
    (tmp_path / "a").mkdir()
    assert nearest_existing(tmp_path / "a" / "b" / "c.txt") == tmp_path / "a"


def test_unwritable_is_none_for_a_writable_or_missing_folder_and_leaves_no_probe(tmp_path):
    assert unwritable(tmp_path) is None
    assert unwritable(tmp_path / "not" / "yet") is None  # would be made inside tmp_path
    assert not (tmp_path / "not").exists()  # the check makes nothing
    assert list(tmp_path.iterdir()) == []  # and its probe file is gone


def test_unwritable_names_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    assert unwritable(tmp_path / "file" / "sub") == f"{tmp_path / 'file'} is a file, not a folder"


def test_unwritable_names_a_read_only_folder(read_only_dir):
    reason = unwritable(read_only_dir / "sub")
    assert reason is not None and reason.startswith(f"{read_only_dir} is not writable (")
    assert READ_ONLY_REASON in reason


def test_write_atomic_writes_makes_parents_and_sets_readable_mode(tmp_path):
    target = tmp_path / "deep" / "er" / "out.txt"
    assert write_atomic(target, lambda tmp: tmp.write_text("hello")) == target
    assert target.read_text() == "hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert leftovers(target.parent) == []


def test_write_atomic_writes_through_a_temporary_file_beside_the_target(tmp_path):
    target = tmp_path / "out.txt"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        tmp.write_text("new")

    write_atomic(target, write)
    assert seen[0].name.startswith(".out.txt.") and seen[0].name.endswith(".tmp") and not seen[0].exists()


def test_write_atomic_keeps_the_old_file_and_removes_the_temporary_one_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_write_atomic_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_atomic(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_write_npz_keeps_the_name_and_the_arrays(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.array(["x", "y"])}
    path = write_npz(tmp_path / "arrays.npz", arrays)
    assert path == tmp_path / "arrays.npz" and sorted(os.listdir(tmp_path)) == ["arrays.npz"]  # no .npz.npz
    with np.load(path) as f:
        assert sorted(f.files) == ["a", "b"]
        np.testing.assert_array_equal(f["a"], arrays["a"])
        assert f["a"].dtype == np.int16
        np.testing.assert_array_equal(f["b"], arrays["b"])
