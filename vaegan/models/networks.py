"""The four networks of Fig. 1, in BEGAN's style (SPEC.md, "Networks").

3x3 convolutions with ELU, no batch-norm, dropout or transposed convolutions. The encoder
subsamples with stride-2 convolutions while its width grows linearly (n, 2n, 3n, ...) down to
8x8; the decoder starts at n x 8 x 8 and upsamples by nearest neighbour. Images live in [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

BASE_RESOLUTION = 8


def num_scales(image_size: int) -> int:
    """Scales between ``image_size`` and 8x8, both included (32 -> 3, 64 -> 4, 128 -> 5)."""
    if image_size < BASE_RESOLUTION or image_size & (image_size - 1):
        raise ValueError(
            f"image_size={image_size} is not supported: it must be a power of two >= {BASE_RESOLUTION} "
            "(e.g. 16, 32, 64, 128). Set data.image_size accordingly."
        )
    return int(math.log2(image_size // BASE_RESOLUTION)) + 1


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


def _conv_pair(width: int) -> list[nn.Module]:
    return [_conv(width, width), nn.ELU(), _conv(width, width), nn.ELU()]


class Encoder(nn.Module):
    """Image (C, S, S) -> vector of size ``out_dim`` (F_vae-e with out_dim = 2h, F_ae-e with h)."""

    def __init__(self, image_size: int, channels: int, width: int, out_dim: int):
        super().__init__()
        scales = num_scales(image_size)
        layers: list[nn.Module] = [_conv(channels, width), nn.ELU()]
        for i in range(scales):
            layers += _conv_pair((i + 1) * width)
            if i < scales - 1:
                layers += [_conv((i + 1) * width, (i + 2) * width, stride=2), nn.ELU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(scales * width * BASE_RESOLUTION**2, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class Decoder(nn.Module):
    """Latent of size h -> image (C, S, S): F_vae-d (the generator) and F_ae-d."""

    def __init__(self, image_size: int, channels: int, width: int, latent_dim: int):
        super().__init__()
        scales = num_scales(image_size)
        self.width = width
        self.fc = nn.Linear(latent_dim, width * BASE_RESOLUTION**2)
        layers: list[nn.Module] = []
        for i in range(scales):
            layers += _conv_pair(width)
            if i < scales - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(_conv(width, channels))
        self.features = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(-1, self.width, BASE_RESOLUTION, BASE_RESOLUTION)
        return self.features(h)


class VAEEncoder(nn.Module):
    """F_vae-e: image -> (mu_v, logvar_v), each of size h.

    With PyTorch's default initialisation sigma starts near 1 while mu varies across images by
    about 1e-3, so z_v starts as almost pure noise. ``logvar_init`` (a number) zeroes the weights of
    the log-variance half of the last layer and sets its bias to that value: every image then starts
    with sigma = exp(logvar_init / 2).
    """

    def __init__(self, image_size: int, channels: int, width: int, latent_dim: int, logvar_init: float | None = None):
        super().__init__()
        self.net = Encoder(image_size, channels, width, 2 * latent_dim)
        if logvar_init is not None:
            with torch.no_grad():
                self.net.fc.weight[latent_dim:].zero_()
                self.net.fc.bias[latent_dim:].fill_(logvar_init)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


class Discriminator(nn.Module):
    """The auto-encoder discriminator: F_ae-e then F_ae-d. Returns (z, x_rec) (Eq. 8)."""

    def __init__(self, image_size: int, channels: int, width: int, latent_dim: int):
        super().__init__()
        self.encoder = Encoder(image_size, channels, width, latent_dim)
        self.decoder = Decoder(image_size, channels, width, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)
