"""Images that are not 8-bit RGB or grey: 16-bit PNGs are cached as their 8-bit originals (not
clipped to 255), transparency is composited over black, and pixel formats without a defined
8-bit range are refused with one line naming the file and the mode."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaegan.data import DataError, FolderDataModule
from vaegan.data.transforms import UnsupportedImage, crop_and_resize, to_8bit


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (grey for (H, W), RGB for (H, W, 3) uint16), independent of
    what Pillow's encoder supports."""
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def faces(celeba_npz) -> np.ndarray:
    """Twelve real 64x64 CelebA images (uint8 RGB) from the shared array."""
    return celeba_npz(64)["x"][:12]


def cached(folder: Path, cache: Path, channels: int, **kwargs) -> FolderDataModule:
    dm = FolderDataModule(root=str(folder), cache_dir=str(cache), image_size=64, channels=channels, batch_size=2,
                          cache_workers=1, **kwargs)
    dm.setup()
    return dm


def by_name(dm: FolderDataModule) -> dict[str, np.ndarray]:
    return {str(name): dm.data.images[i] for i, name in enumerate(dm.data.arrays["filenames"])}


def assert_within_one(got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()} (got {got.min()}..{got.max()}, want {want.min()}..{want.max()})"


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_pngs_are_cached_as_their_8_bit_originals(faces, tmp_path, channels):
    folder = tmp_path / "png16"
    folder.mkdir()
    grey = [np.asarray(Image.fromarray(face).convert("L")) for face in faces]
    for i, g in enumerate(grey):
        write_png16(folder / f"{i:02d}.png", g.astype(np.uint16) * 257)  # 0..255 -> 0..65535
    with Image.open(folder / "00.png") as img:
        assert img.mode in ("I;16", "I")  # what Pillow makes of a 16-bit grey PNG (newer, older versions)
    images = by_name(cached(folder, tmp_path / "cache", channels))
    for i, g in enumerate(grey):
        assert_within_one(images[f"{i:02d}.png"], np.repeat(g[..., None], channels, axis=-1))


def test_16_bit_rgb_pngs_are_cached_as_their_8_bit_originals(faces, tmp_path):
    folder = tmp_path / "png48"
    folder.mkdir()
    for i, face in enumerate(faces):
        write_png16(folder / f"{i:02d}.png", face.astype(np.uint16) * 257)
    images = by_name(cached(folder, tmp_path / "cache", 3))
    for i, face in enumerate(faces):
        assert_within_one(images[f"{i:02d}.png"], face)


def test_transparent_pixels_are_black_and_opaque_ones_unchanged(faces, tmp_path):
    folder = tmp_path / "alpha"
    folder.mkdir()
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # the left half fully transparent; its colour is the face's, which must not show
    alpha[:8, 32:] = 128
    Image.fromarray(np.dstack([faces[0], alpha])).save(folder / "rgba.png")
    Image.fromarray(faces[1]).convert("P").save(folder / "palette.png", transparency=0)
    images = by_name(cached(folder, tmp_path / "cache", 3))
    rgba = images["rgba.png"]
    assert not rgba[:, :32].any()
    assert np.array_equal(rgba[8:, 32:], faces[0][8:, 32:])
    assert_within_one(rgba[:8, 32:], np.round(faces[0][:8, 32:] * (128 / 255)).astype(np.uint8))
    with Image.open(folder / "palette.png") as img:
        want = np.asarray(img.convert("RGB"))
        hidden = np.asarray(img) == 0  # pixels of the transparent palette entry
    assert hidden.any() and not images["palette.png"][hidden].any()
    assert np.array_equal(images["palette.png"][~hidden], want[~hidden])


@pytest.mark.parametrize("mode, values", [("I;16", np.uint16), ("I;16B", ">u2"), ("I", np.int32)])
def test_to_8bit_keeps_the_top_8_bits(mode, values):
    levels = np.arange(256).reshape(16, 16)
    img = Image.fromarray((levels * 256 + 255 - levels).astype(np.uint16).astype(values))  # the low byte is dropped
    assert img.mode == mode
    assert np.array_equal(np.asarray(to_8bit(img, 1)), levels)
    assert np.array_equal(crop_and_resize(img, 16, None, 3), np.repeat(levels[..., None], 3, -1).astype(np.uint8))


@pytest.mark.parametrize("img, message", [
    (Image.fromarray(np.zeros((4, 4), np.float32)), "32-bit float pixels (mode F) have no defined 0-255 range"),
    (Image.fromarray(np.full((4, 4), 70_000, np.int32)), "32-bit integer pixels (mode I) from 70000 to 70000, beyond 16 bits"),
    (Image.fromarray(np.full((4, 4), -1, np.int32)), "(mode I) from -1 to -1"),
])
def test_to_8bit_refuses_pixels_without_an_8_bit_range(img, message):
    with pytest.raises(UnsupportedImage, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_8bit(img)


def test_refused_image_in_a_folder_names_the_file_and_the_mode(faces, tmp_path):
    folder = tmp_path / "float"
    folder.mkdir()
    Image.fromarray(faces[0]).save(folder / "a.png")
    Image.fromarray(faces[0][..., 0].astype(np.float32) / 255).save(folder / "b.png", format="TIFF")  # a TIFF named .png
    with pytest.raises(DataError) as err:
        cached(folder, tmp_path / "cache", 3)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"unreadable image {folder / 'b.png'} (UnsupportedImage: 32-bit float pixels (mode F)")
