"""vaegan.data.cache_fill: every chunk of images.npy filled, in this process or in workers alike,
with each chunk's CRC-32, and an unreadable image reported (or raised with data.on_bad_image=error)."""

from __future__ import annotations

import numpy as np
import pytest

from vaegan.data import cache_fill
from vaegan.data.errors import DataError


class Numbers:
    """A stand-in source: image i is filled with i % 251; image 3 cannot be read."""

    name = "numbers"

    def __len__(self) -> int:
        return cache_fill.CHUNK_ROWS + 7  # two chunks, the second short

    def read(self, i: int, size: int, channels: int) -> np.ndarray:
        if i == 3:
            raise OSError("truncated file")
        return np.full((size, size, channels), i % 251, np.uint8)

    def describe(self, i: int) -> str:
        return f"image{i}.png"


def filled(tmp_path, workers: int, on_bad_image: str = "skip"):
    file = tmp_path / f"images{workers}.npy"
    np.save(file, np.zeros((len(Numbers()), 4, 4, 1), np.uint8))
    crcs, bad = cache_fill.fill_chunks(Numbers(), 4, 1, file, workers, on_bad_image)
    return np.load(file), crcs, bad


@pytest.mark.parametrize("workers", [1, 2])
def test_every_chunk_is_filled_with_its_crc_and_the_bad_image_reported(tmp_path, workers):
    images, crcs, bad = filled(tmp_path, workers)
    expected = np.arange(len(images)) % 251
    expected[3] = 0  # unreadable: left black
    assert (images[:, 0, 0, 0] == expected).all()
    rows = cache_fill.CHUNK_ROWS
    assert crcs == [cache_fill.crc_of_rows(images, 0, rows), cache_fill.crc_of_rows(images, rows, 2 * rows)]
    assert bad == [(3, "image3.png", "OSError: truncated file")]


def test_a_bad_image_with_on_bad_image_error_names_the_file(tmp_path):
    with pytest.raises(DataError, match="unreadable image image3.png .OSError: truncated file.*on_bad_image=skip"):
        filled(tmp_path, 1, on_bad_image="error")
