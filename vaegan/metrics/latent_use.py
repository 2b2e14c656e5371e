"""Whether the VAE uses its latent code: KL in nats, active units, and reconstruction PSNR and SSIM
beside the mean-image floor, on held-out images.

A collapsed posterior (every image encoded to nearly the prior) shows here first: little KL per
image and reconstructions hardly better than the mean image. Active units alone miss it (a code
can vary across images by more than 0.01 and still carry a fraction of a nat per dimension), so
the collapse test looks at the nats and the PSNR gain. PSNR and SSIM are torchmetrics'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vaegan.models.losses import kl_per_image

DATA_RANGE = 2.0  # images live in [-1, 1]
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active when Var_x(E_q[z_u]) > 0.01


@dataclass
class LatentUse:
    kl_nats: float  # KL(q(z|x) || N(0, I)) per image, summed over latent dimensions, mean over images
    active_units: int  # latent dimensions with Var_x(mu_v(x)) > 0.01
    latent_dim: int
    psnr: float  # of decoder(mu_v(x)) against x, dB, mean over images
    ssim: float
    psnr_mean_image: float  # of the images' mean image against each image: the collapse floor
    images: int

    @property
    def psnr_gain(self) -> float:
        return self.psnr - self.psnr_mean_image

    def as_dict(self) -> dict[str, float]:
        return {key: value for key, value in asdict(self).items() if key not in ("latent_dim", "images")}

    def collapse(self, min_kl_nats: float, min_psnr_gain_db: float) -> str | None:
        """Why this posterior counts as collapsed (under ``min_kl_nats`` per image, or reconstructions
        within ``min_psnr_gain_db`` of the mean image), or None."""
        reasons = []
        if self.kl_nats < min_kl_nats:
            reasons.append(f"KL {self.kl_nats:.3g} nats per image (< {min_kl_nats:g})")
        if self.psnr_gain < min_psnr_gain_db:
            reasons.append(f"reconstructions {self.psnr_gain:+.2f} dB against the mean image (< {min_psnr_gain_db:g} dB)")
        return "; ".join(reasons) or None


def active_units(mu: Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent dimensions whose posterior mean varies across the images (N, D) by more than ``threshold``
    (population variance)."""
    return int((mu.float().var(dim=0, correction=0) > threshold).sum())


def psnr_per_image(x_rec: Tensor, x: Tensor) -> Tensor:
    """PSNR of each image (N,) in dB, images in [-1, 1]."""
    return peak_signal_noise_ratio(x_rec.float(), x.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))


def ssim_per_image(x_rec: Tensor, x: Tensor) -> Tensor:
    """SSIM of each image (N,): Gaussian window of 11 pixels (fewer on images under 11 pixels), sigma 1.5."""
    side = min(x.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    return structural_similarity_index_measure(x_rec.float(), x.float(), data_range=DATA_RANGE, kernel_size=kernel,
                                               reduction="none")


@torch.no_grad()
def latent_use(encode: Callable[[Tensor], tuple[Tensor, Tensor]], decode: Callable[[Tensor], Tensor],
               batches: Callable[[], Iterable[Tensor]]) -> LatentUse:
    """The figures of ``LatentUse`` over the model-input batches that ``batches()`` yields (called
    twice: once for the mean image, once for the rest). ``encode`` maps x to (mu_v, logvar_v),
    ``decode`` z to images; callers put the networks in eval mode."""
    total, count = None, 0
    for x in batches():
        total = x.float().sum(0) if total is None else total + x.float().sum(0)
        count += len(x)
    if not count:
        raise ValueError("latent_use needs at least one image")
    mean_image = total / count
    kl, mus, psnr, ssim, floor = [], [], [], [], []
    for x in batches():
        mu, logvar = encode(x)
        x_rec = decode(mu)
        kl.append(kl_per_image(mu, logvar))
        mus.append(mu.float())
        psnr.append(psnr_per_image(x_rec, x))
        ssim.append(ssim_per_image(x_rec, x))
        floor.append(psnr_per_image(mean_image.expand_as(x), x))
    mu = torch.cat(mus)
    return LatentUse(kl_nats=float(torch.cat(kl).mean()), active_units=active_units(mu), latent_dim=mu.shape[1],
                     psnr=float(torch.cat(psnr).mean()), ssim=float(torch.cat(ssim).mean()),
                     psnr_mean_image=float(torch.cat(floor).mean()), images=count)
