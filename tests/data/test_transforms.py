"""vaegan.data.transforms: the documented crop-and-resize (bit for bit torchvision's) and the
per-batch conversion to model input (scaling, layout, seeded flips) and back."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tests.conftest import celeba_jpegs
from vaegan.data.transforms import center_crop_box, crop_and_resize, mirror_rows, to_model_input, to_uint8


def torchvision_reference(img: Image.Image, crop: int, size: int) -> np.ndarray:
    return np.asarray(T.Compose([T.CenterCrop(crop), T.Resize(size)])(img))


@pytest.mark.parametrize("crop", [178, 140])
@pytest.mark.parametrize("size", [64, 128])
def test_crop_and_resize_equals_torchvision_on_celeba_jpegs(crop, size):
    for path in celeba_jpegs()[:2]:
        with Image.open(path) as img:
            assert img.size == (178, 218)
            got = crop_and_resize(img, size, crop)
            expected = torchvision_reference(img.convert("RGB"), crop, size)
        assert got.dtype == np.uint8 and got.shape == (size, size, 3)
        assert np.array_equal(got, expected), path.name


@pytest.mark.parametrize("width, height, crop, size", [
    (101, 120, 141, 64),  # crop larger than both sides: pad 20/20 columns, 10/11 rows
    (97, 150, 120, 32),  # pad the width (11/12 columns), crop the height (offset 15)
    (150, 95, 130, 130),  # pad the height only (17/18 rows), no resize
    (33, 29, 40, 16),
])
def test_crop_and_resize_pads_like_torchvision(width, height, crop, size):
    rng = np.random.default_rng(width * height)
    img = Image.fromarray(rng.integers(1, 256, (height, width, 3), dtype=np.uint8))  # no black pixels inside
    got = crop_and_resize(img, size, crop)
    assert got.shape == (size, size, 3)
    assert np.array_equal(got, torchvision_reference(img, crop, size))


def test_padding_is_black_on_the_far_side_first():
    """A 20x25 white image, CenterCrop(31) without resize: 5 columns left, 6 right, 3 rows on top and bottom."""
    white = Image.new("RGB", (20, 25), (255, 255, 255))
    out = crop_and_resize(white, 31, 31)
    assert np.array_equal(out, torchvision_reference(white, 31, 31))
    inside = np.zeros((31, 31), bool)
    inside[3:28, 5:25] = True
    assert (out[inside] == 255).all() and (out[~inside] == 0).all()


def test_grayscale_and_default_crop():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 25, 3), dtype=np.uint8))
    gray = crop_and_resize(img, 16, 20, channels=1)
    assert gray.shape == (16, 16, 1)
    assert np.array_equal(gray[..., 0], np.asarray(T.Compose([T.Grayscale(), T.CenterCrop(20), T.Resize(16)])(img)))
    # no crop given: the shorter side (25)
    assert np.array_equal(crop_and_resize(img, 16), torchvision_reference(img, 25, 16))


def test_center_crop_box_rounds_like_torchvision():
    assert center_crop_box(178, 218, 178) == (0, 20, 178, 198)  # the documented CelebA crop
    # Python's round() (half to even), as torchvision's int(round((extent - crop) / 2.0))
    assert center_crop_box(179, 178, 178)[:2] == (0, 0)  # 0.5 -> 0
    assert center_crop_box(181, 178, 178)[:2] == (2, 0)  # 1.5 -> 2
    assert center_crop_box(183, 178, 178)[:2] == (2, 0)  # 2.5 -> 2
    assert center_crop_box(185, 178, 178)[:2] == (4, 0)  # 3.5 -> 4
    # a crop larger than the image: negative offsets, the extra column/row on the far side
    assert center_crop_box(20, 25, 31) == (-5, -3, 26, 28)
    assert center_crop_box(21, 25, 31) == (-5, -3, 26, 28)


@pytest.mark.parametrize("width", range(170, 186))
def test_center_crop_box_matches_torchvision_offsets(width):
    """Pixels that encode their own column and row: torchvision's crop starts where the box says."""
    height = 190
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    img = Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], -1).astype(np.uint8))
    for crop in (150, 169, 170):
        cropped = np.asarray(T.CenterCrop(crop)(img))
        left, top, right, bottom = center_crop_box(width, height, crop)
        assert (right - left, bottom - top) == (crop, crop)
        assert (cropped[0, 0, 0], cropped[0, 0, 1]) == (left, top), (width, crop)


def test_to_model_input_scales_and_transposes():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8))
    x[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    y = to_model_input(x)
    assert y.dtype == torch.float32 and y.shape == (4, 3, 5, 6) and y.is_contiguous()
    assert y[0, 0, 0, 0].item() == -1.0 and y[0, 1, 0, 0].item() == 1.0  # 0 -> -1 and 255 -> 1 exactly
    assert y[0, 2, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    torch.testing.assert_close(y, x.permute(0, 3, 1, 2).double().div(127.5).sub(1).float(), rtol=0, atol=1e-6)
    assert y.min() >= -1 and y.max() <= 1
    assert torch.equal(x[0, 0, 0], torch.tensor([0, 255, 128], dtype=torch.uint8))  # the input is left alone


def test_flips_mirror_exactly_the_images_the_generator_selects():
    n = 16
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 6, 7, 3), dtype=np.uint8))
    plain = to_model_input(x)
    flipped = to_model_input(x, flip=True, generator=torch.Generator().manual_seed(123))
    selected = torch.rand(n, generator=torch.Generator().manual_seed(123)) < 0.5
    assert 0 < int(selected.sum()) < n  # this seed flips some images and keeps others
    for i in range(n):
        assert not torch.equal(plain[i], plain[i].flip(-1))  # random images are not symmetric
        assert torch.equal(flipped[i], plain[i].flip(-1) if selected[i] else plain[i]), i
    again = to_model_input(x, flip=True, generator=torch.Generator().manual_seed(123))
    assert torch.equal(again, flipped)  # same seed, same flips
    other = to_model_input(x, flip=True, generator=torch.Generator().manual_seed(124))
    assert not torch.equal(other, flipped)
    assert torch.equal(to_model_input(x, flip=False, generator=torch.Generator().manual_seed(123)), plain)


def test_to_uint8_inverts_to_model_input():
    every_value = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1)
    assert torch.equal(to_uint8(to_model_input(every_value)), every_value)
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 8, 9, 3), dtype=np.uint8))
    back = to_uint8(to_model_input(x))
    assert back.dtype == torch.uint8 and back.shape == x.shape and torch.equal(back, x)
    assert to_uint8(torch.full((1, 1, 2, 2), 3.0)).max() == 255  # out of range clamps


def test_both_ways_of_mirroring_agree():
    """The CPU path (copy the selected images) and the GPU path (one where) give the same batch."""
    x = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
    mirror = torch.tensor([True, False, False, True, True, False])
    selected, where = mirror_rows(x, mirror, select=True), mirror_rows(x, mirror, select=False)
    assert torch.equal(selected, where)
    assert torch.equal(selected[0], x[0].flip(1)) and torch.equal(selected[1], x[1])
    assert torch.equal(mirror_rows(x, torch.zeros(6, dtype=torch.bool), select=True), x)
