"""Pixel transforms: the documented crop-and-resize (run once, when a cache is built) and the
per-batch conversion to model input (run on the training device).

The crop-and-resize equals ``torchvision.transforms.Compose([CenterCrop(c), Resize(S)])`` on a
PIL image, bit for bit: crop first, then Pillow's bilinear resize, which antialiases when it
shrinks. (Resizing with Pillow's ``box=`` argument instead of cropping is *not* equivalent: the
filter then reads pixels outside the box.) Images that are not 8-bit are brought to 8 bits
first, without clipping (``to_8bit``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

MODES = {1: "L", 3: "RGB"}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA = ("LA", "PA", "RGBA", "RGBa")


class UnsupportedImage(ValueError):
    """An image whose pixels have no defined 8-bit equivalent; the message names its mode."""


def to_8bit(img: Image.Image, channels: int = 3) -> Image.Image:
    """``img`` in mode L (``channels`` 1) or RGB (3), converted without losing its range.

    - 16-bit grey (``I;16*``, and ``I`` holding 0..65535, as older Pillow opens 16-bit PNGs) keeps
      its top 8 bits, ``v >> 8``, as Pillow reads 16-bit RGB PNGs: ``257 * v`` gives back ``v``.
      (Pillow's own conversion clips: 0..65535 would become 0..255 saturated at 255.)
    - ``I`` beyond 0..65535 and ``F`` (32-bit float) have no defined range: UnsupportedImage.
    - Transparency (LA, PA, RGBA, or P/L/RGB with a transparent colour) is composited over black,
      the colour of the crop's padding, so the arbitrary colours under transparent pixels never
      show; opaque pixels are unchanged.
    - Other modes (1, L, P, RGB, CMYK, YCbCr, ...) convert as Pillow does.
    """
    if img.mode == "F":
        raise UnsupportedImage("32-bit float pixels (mode F) have no defined 0-255 range; save it as an 8- or 16-bit image")
    if img.mode == "I":
        low, high = img.getextrema()
        if low < 0 or high > 65535:
            raise UnsupportedImage(f"32-bit integer pixels (mode I) from {low} to {high}, beyond 16 bits; save it as an 8- or 16-bit image")
    if img.mode in SIXTEEN_BIT or img.mode == "I":
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    elif img.mode in ALPHA or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
    return img.convert(MODES[channels])


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of torchvision's CenterCrop(crop), with its rounding and,
    for a crop larger than the image, its padding rule (extra column or row on the far side)."""

    def offset(extent: int) -> int:
        return int(round((extent - crop) / 2.0)) if crop <= extent else -((crop - extent) // 2)

    left, top = offset(width), offset(height)
    return left, top, left + crop, top + crop


def crop_and_resize(img: Image.Image, size: int, crop: int | None = None, channels: int = 3) -> np.ndarray:
    """CenterCrop(crop or the shorter side) then Resize(size), bilinear: (size, size, channels) uint8.

    A crop larger than the image pads with black, as torchvision's CenterCrop does.
    """
    img = to_8bit(img, channels)
    crop = crop or min(img.size)
    if img.size != (crop, crop):
        img = img.crop(center_crop_box(*img.size, crop))  # Pillow pads with zeros outside the image
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def to_model_input(x: Tensor, flip: bool = False, generator: torch.Generator | None = None,
                   flips: Tensor | None = None) -> Tensor:
    """uint8 images (N, H, W, C) -> float (N, C, H, W) in [-1, 1], each image mirrored left-right
    with probability 1/2 when ``flip`` (or where the boolean ``flips`` is true, when given). Works on
    whole batches, on whatever device ``x`` lives."""
    if flip:  # on the uint8 pixels: a quarter of the bytes of the floats
        mirror = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5 if flips is None else flips
        x = mirror_rows(x, mirror, select=x.device.type == "cpu")
    x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return x.mul_(1 / 127.5).sub_(1.0)


def mirror_rows(x: Tensor, mirror: Tensor, select: bool) -> Tensor:
    """Images (N, H, W, C) with those where ``mirror`` is true flipped left-right. ``select`` copies
    only the mirrored images (fastest on a CPU); otherwise one ``where`` over the batch, which on
    a GPU avoids ``nonzero()`` and its wait for the device."""
    if select:
        rows = mirror.nonzero().squeeze(1)
        return x.index_copy(0, rows, x.index_select(0, rows).flip(2))
    return torch.where(mirror[:, None, None, None], x.flip(2), x)


def to_uint8(x: Tensor) -> Tensor:
    """The inverse of ``to_model_input`` (without flips): float (N, C, H, W) -> uint8 (N, H, W, C)."""
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
