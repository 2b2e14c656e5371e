"""Latent-space arithmetic of Sec. 5.5: encoding real images, interpolation (Fig. 6) and
attribute vectors (Fig. 8). Pure tensor functions; the pictures are drawn by ``vaegan.latent.panels``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from vaegan.data.transforms import to_model_input


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """(1 - t) a + t b for each row of a, b (N, D) and each t (T,): (N, T, D)."""
    t = t.to(a)[None, :, None]
    return a[:, None] * (1 - t) + b[:, None] * t


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake; White 2016 for generative models): along the great
    circle between the directions of a and b, with the norm interpolated linearly, so every
    code's norm lies between the endpoints'. (N, D), (N, D), (T,) -> (N, T, D)."""
    t = t.to(a)[None, :, None]
    na, nb = a.norm(dim=1, keepdim=True).clamp_min(1e-12), b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ua, ub = a / na, b / nb
    omega = torch.acos((ua * ub).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # (N, 1, 1)
    sin = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) * ua[:, None] + torch.sin(t * omega) * ub[:, None]) / sin
    direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return direction * (na[:, None] * (1 - t) + nb[:, None] * t)


INTERPOLATIONS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {"linear": lerp, "spherical": slerp}


def interpolate(a: Tensor, b: Tensor, steps: int, mode: str = "linear") -> Tensor:
    """``steps`` codes from a to b inclusive (t = 0, ..., 1) for each pair of rows: (N, steps, D)."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"mode={mode!r}: use one of {sorted(INTERPOLATIONS)}")
    if steps < 2:
        raise ValueError(f"steps={steps}: needs at least 2 (the two endpoints)")
    return INTERPOLATIONS[mode](a, b, torch.linspace(0, 1, steps))


def batches(images: np.ndarray, batch_size: int, rows: np.ndarray | None = None) -> Iterator[Tensor]:
    """uint8 (N, H, W, C) images, all or those of the index ``rows`` -> model-input batches, read a
    batch at a time (memory maps stay on disk)."""
    count = len(images) if rows is None else len(rows)
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size) if rows is None else np.asarray(rows[start:start + batch_size])
        yield to_model_input(torch.from_numpy(np.asarray(images[part])))


@torch.no_grad()
def encode_images(encoder: nn.Module, images: np.ndarray | Tensor, batch_size: int = 256,
                  device: torch.device | str = "cpu", progress: Callable[[int], None] | None = None,
                  rows: np.ndarray | None = None) -> Tensor:
    """Posterior means mu_v of uint8 (N, H, W, C) images (only those of the index ``rows``, when
    given), or of model-input (N, C, H, W) floats, with the encoder in eval mode (its mode is
    restored): (N, D) on the CPU."""
    was_training = encoder.training
    encoder.eval()
    try:
        if isinstance(images, Tensor) and images.is_floating_point():
            chunks = (images if rows is None else images[torch.as_tensor(rows)]).split(batch_size)
        else:
            chunks = batches(np.asarray(images) if isinstance(images, Tensor) else images, batch_size, rows)
        codes = []
        for x in chunks:
            codes.append(encoder(x.to(device))[0].float().cpu())
            if progress is not None:
                progress(len(x))
        return torch.cat(codes)
    finally:
        encoder.train(was_training)


def presence(target: np.ndarray | Tensor, num_classes: int | None = None) -> Tensor:
    """Per-image attribute table -> bool (N, A). CelebA's attrs (-1/+1, or 0/1) are kept as they
    are; integer class labels (N,) become one column per class (one-vs-rest)."""
    target = torch.as_tensor(np.asarray(target))
    if target.ndim == 2:
        return target > 0
    return nn.functional.one_hot(target.long(), num_classes or int(target.max()) + 1).bool()


def attribute_table(dm) -> tuple[list[str], str]:
    """The names of a dataset's attributes and the array that holds them: CelebA's ``attrs``, or
    the classes of ``labels`` (named by ``class_names`` when the source has them)."""
    arrays = dm.data.arrays
    if "attrs" in arrays:
        return dm.attr_names, "attrs"
    if "labels" in arrays:
        return dm.class_names or [str(c) for c in range(int(np.max(arrays["labels"])) + 1)], "labels"
    raise ValueError("this dataset has neither attributes nor class labels: there is nothing to average or "
                     "measure edits against; use CelebA (attrs), CIFAR-10 or the digits (labels), or a labelled folder/npz")


def attribute_vectors(codes: Tensor, present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sec. 5.5: for each attribute a, mean(codes of images with a) - mean(codes of images without a).

    codes (N, D), present bool (N, A) -> vectors (A, D) and the counts with and without (A,).
    An attribute that no image (or every image) has gets a NaN vector: there is nothing to average.
    """
    codes = codes.double()
    with_ = present.double()
    n_with, n_without = with_.sum(0), (1 - with_).sum(0)
    mean_with = (with_.T @ codes) / n_with[:, None]
    mean_without = ((1 - with_).T @ codes) / n_without[:, None]
    return (mean_with - mean_without).float(), n_with.long(), n_without.long()


def edit_codes(z: Tensor, vector: Tensor, weights: Tensor | list[float]) -> Tensor:
    """Fig. 8: z + w * vector for each code (N, D) and each weight (W,): (N, W, D)."""
    weights = torch.as_tensor(weights, dtype=z.dtype, device=z.device)
    return z[:, None] + weights[None, :, None] * vector.to(z)[None, None]
