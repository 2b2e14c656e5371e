"""The pictures of the paper, as image grids: samples (Figs. 2-3), the discriminator's
reconstructions (Fig. 4), interpolations (Fig. 6) and attribute edits (Fig. 8).

Every panel is a float (3, H, W) tensor in [0, 1] (torchvision's ``make_grid`` layout), drawn
with the model in eval mode; ``annotate`` adds readable labels. Used by ``python -m
vaegan.latent.explore`` and, during training, by ``vaegan.training.callbacks.ImageLogger``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torchvision.utils import make_grid

from vaegan.latent.arithmetic import edit_codes, interpolate

PAD = 2


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; the module's mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def grid(rows: Tensor | Sequence[Tensor]) -> Tensor:
    """Images (R, C, ch, h, w) in [-1, 1], or a list of R rows of C images: one picture, R rows by C
    columns, in [0, 1]; grayscale becomes RGB."""
    rows = torch.stack(list(rows)) if not isinstance(rows, Tensor) else rows
    cols = rows.shape[1]
    return make_grid(rows.flatten(0, 1).float().cpu(), nrow=cols, padding=PAD, normalize=True, value_range=(-1, 1),
                     pad_value=1.0)


def annotate(picture: Tensor, title: str = "", columns: Sequence[str] = (), rows: Sequence[str] = ()) -> Tensor:
    """The picture with a title and column labels above it and row labels at its left, in black on
    white (PIL's built-in font). Labels are centred on the cells of a ``grid``."""
    font = ImageFont.load_default()
    width_of = lambda s: int(font.getlength(s))  # noqa: E731
    line = 12
    left = max((width_of(r) for r in rows), default=0) + (6 if rows else 0)
    top = (line if title else 0) + (line if columns else 0)
    _, h, w = picture.shape
    canvas = Image.new("RGB", (max(w + left, width_of(title) + left + 2 * PAD), h + top + (2 if top else 0)), "white")
    canvas.paste(Image.fromarray(picture.mul(255).round().byte().permute(1, 2, 0).numpy()), (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + PAD, 0), title, fill="black", font=font)
    if columns:
        cell = (w - PAD) / len(columns)
        for i, label in enumerate(columns):
            draw.text((left + PAD + cell * i + (cell - width_of(label)) / 2, top - line), label, fill="black", font=font)
    if rows:
        cell = (h - PAD) / len(rows)
        for i, label in enumerate(rows):
            draw.text((2, top + PAD + cell * i + cell / 2 - line / 2), label, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def weight_labels(weights: Sequence[float]) -> list[str]:
    return [f"{w:+g}" if w else "0" for w in weights]


# ------------------------------------------------------------------------------ the panels
def samples(module, z: Tensor, nrow: int = 8) -> Tensor:
    """Decoded codes z (N, D), nrow to a row."""
    with evaluating(module):
        x = module.decode(z.to(module.device))
    pad = (-len(x)) % nrow  # a last, partial row is filled with blanks (white after normalising)
    x = torch.cat([x, x.new_ones(pad, *x.shape[1:])])
    return grid(x.view(-1, nrow, *x.shape[1:]))


def reconstructions(module, x: Tensor, nrow: int = 8) -> Tensor:
    """Each real image followed by its VAE reconstruction F_vae-d(mu_v(x)), or by the
    discriminator's x'_d for models without an encoder."""
    with evaluating(module):
        x = x.to(module.device)
        rec = module.decode(module.encode(x)[0]) if module.encoder is not None else module.discriminate(x)[1]
    pairs = torch.stack([x, rec], dim=1).flatten(0, 1)
    pad = (-len(pairs)) % nrow
    pairs = torch.cat([pairs, pairs.new_ones(pad, *pairs.shape[1:])])
    return grid(pairs.view(-1, nrow, *pairs.shape[1:]))


def discriminator_rows(module, x: Tensor, z: Tensor) -> dict[str, Tensor]:
    """Fig. 4: generated images x_g = F_vae-d(z), the discriminator's reconstructions of them, real
    images x, the discriminator's reconstructions of those, and (with an encoder) the VAE's
    reconstructions of x. Each row (N, ch, h, w); rows without a network are left out."""
    with evaluating(module):
        x, z = x.to(module.device), z.to(module.device)
        x_g = module.decode(z)
        rows = {"generated": x_g}
        if module.discriminator is not None:
            rows["D(generated)"] = module.discriminate(x_g)[1]
        rows["real"] = x
        if module.discriminator is not None:
            rows["D(real)"] = module.discriminate(x)[1]
        if module.encoder is not None:
            rows["VAE(real)"] = module.decode(module.encode(x)[0])
    return rows


def discriminator_panel(module, x: Tensor, z: Tensor) -> Tensor:
    rows = discriminator_rows(module, x, z)
    return annotate(grid(list(rows.values())), rows=list(rows))


def interpolation_codes(module, xa: Tensor | None, xb: Tensor | None, steps: int, mode: str = "linear",
                        za: Tensor | None = None, zb: Tensor | None = None) -> Tensor:
    """Codes from a to b (N, steps, D): the posterior means of real images xa, xb, or codes za, zb."""
    with evaluating(module):
        if xa is not None:
            za, zb = module.encode(xa.to(module.device))[0], module.encode(xb.to(module.device))[0]
        return interpolate(za.to(module.device), zb.to(module.device), steps, mode)


def interpolation_panel(module, steps: int, mode: str = "linear", xa: Tensor | None = None,
                        xb: Tensor | None = None, za: Tensor | None = None, zb: Tensor | None = None) -> Tensor:
    """Fig. 6: one row per pair, the decoded interpolation between the pair's codes; between real
    images xa, xb (encoded to their posterior means), the real images stand at the row's ends."""
    codes = interpolation_codes(module, xa, xb, steps, mode, za, zb)
    with evaluating(module):
        decoded = module.decode(codes.flatten(0, 1)).view(*codes.shape[:2], *module_shape(module))
    if xa is not None:
        decoded = torch.cat([xa.to(decoded)[:, None], decoded, xb.to(decoded)[:, None]], dim=1)
    return grid(decoded)


def edit_images(module, z: Tensor, vector: Tensor, weights: Sequence[float], x: Tensor | None = None) -> Tensor:
    """Fig. 8: F_vae-d(z + w * vector) for each code z (rows) and weight w (columns), (N, W, ch, h, w);
    with the real images x the codes came from as an extra first column."""
    codes = edit_codes(z.to(module.device), vector, list(weights))
    with evaluating(module):
        decoded = module.decode(codes.flatten(0, 1)).view(*codes.shape[:2], *module_shape(module))
    if x is not None:
        decoded = torch.cat([x.to(decoded)[:, None], decoded], dim=1)
    return decoded


def edit_panel(module, z: Tensor, vector: Tensor, weights: Sequence[float], title: str,
               x: Tensor | None = None) -> Tensor:
    """``edit_images`` as a picture, titled, with the weights above the columns."""
    columns = (["real"] if x is not None else []) + weight_labels(weights)
    return annotate(grid(edit_images(module, z, vector, weights, x)), title=title, columns=columns)


def module_shape(module) -> tuple[int, int, int]:
    hp = module.hparams
    return hp.channels, hp.image_size, hp.image_size


def training_panels(module, z: Tensor, x: Tensor, pairs: int, steps: int, mode: str = "linear",
                    x_pairs: Tensor | None = None, z_pairs: Tensor | None = None) -> dict[str, Tensor]:
    """The panels logged during training: samples of fixed codes z, reconstructions of fixed real
    images x, Fig. 4's discriminator panel (models with a discriminator; 8 columns) and ``pairs``
    interpolations between consecutive images of ``x_pairs`` (default x), or between consecutive
    codes of ``z_pairs`` (default z) for models without an encoder."""
    panels = {"samples": samples(module, z), "reconstructions": reconstructions(module, x)}
    if module.discriminator is not None:
        n = min(8, len(x), len(z))
        panels["discriminator"] = discriminator_panel(module, x[:n], z[:n])
    if pairs > 0:
        if module.encoder is not None:
            ends = x if x_pairs is None else x_pairs
            k = min(pairs, len(ends) // 2)
            panels["interpolations"] = interpolation_panel(module, steps, mode, xa=ends[0:2 * k:2], xb=ends[1:2 * k:2])
        else:
            ends = z if z_pairs is None else z_pairs
            k = min(pairs, len(ends) // 2)
            panels["interpolations"] = interpolation_panel(module, steps, mode, za=ends[0:2 * k:2], zb=ends[1:2 * k:2])
    return panels
