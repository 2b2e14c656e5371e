"""Tests of ``vaegan.utils.hashing``: file digests and canonical-JSON key digests."""

from __future__ import annotations

import hashlib

from vaegan.utils.hashing import digest, sha256_file


def test_sha256_file_matches_hashlib_across_block_boundaries(tmp_path):
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 7):  # sha256_file reads 1 MiB blocks
        data = bytes(i % 251 for i in range(size))
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_the_empty_file(tmp_path):
    (tmp_path / "empty").touch()
    assert sha256_file(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_digest_is_the_sha256_of_sorted_json():
    assert digest({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a": [1, 2], "b": 1}').hexdigest()


def test_digest_ignores_key_order_but_not_values_or_types():
    base = {"dataset": "celeba", "image_size": 64, "nested": {"x": 1, "y": 2}}
    assert digest(base) == digest({"nested": {"y": 2, "x": 1}, "image_size": 64, "dataset": "celeba"})
    assert digest(base) != digest({**base, "image_size": 32})
    assert digest(base) != digest({**base, "image_size": "64"})  # a string is not the number
    assert digest(base) != digest({**base, "extra": None})
    assert len(digest(base)) == 64 and int(digest(base), 16) >= 0
