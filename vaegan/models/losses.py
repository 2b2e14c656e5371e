"""The paper's equations, one function each (SPEC.md, "Losses" and "Objectives").

Every reconstruction loss is a mean absolute error. Each function takes tensors and returns a
0-dim tensor. The objectives (Eqs. 13-15) are one table of weights (``objective_table``), which the
training step differentiates per network (``vaegan.training.routing``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLReduction = Literal["elbo", "mean", "sum_latent"]


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """Eq. 4: z_v = mu_v + eps * sigma_v with eps ~ N(0, I) drawn by the caller."""
    return mu + eps * torch.exp(0.5 * logvar)


def l1(a: Tensor, b: Tensor) -> Tensor:
    """(1/|a|) ||a - b||_1, the mean absolute error every loss below is made of; in float32 even
    under bf16 autocast, so that e_t and k_t keep their precision (a no-op for float32 inputs)."""
    return (a.float() - b.float()).abs().mean()


def content_loss(x: Tensor, x_v: Tensor) -> Tensor:
    """Eq. 2: L_e = mean |x - x_v|, the VAE's pixel reconstruction loss."""
    return l1(x, x_v)


def kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, 1)) of each image and latent dimension in nats: (B, h)."""
    mu, logvar = mu.float(), logvar.float()  # float32 under bf16 autocast too
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def kl_per_image(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, I)) of each image in nats, summed over the latent dimensions: (B,)."""
    return kl_per_dimension(mu, logvar).sum(dim=1)


def kl_loss(mu: Tensor, logvar: Tensor, reduction: KLReduction, pixels: int | None = None,
            free_nats: float = 0.0) -> Tensor:
    """Eq. 3: L_n = KL(N(mu_v, sigma_v) || N(0, I)) in closed form, reduced by ``reduction``:

    ``elbo`` (the model's default): the per-image KL, summed over latent dimensions and averaged over the
    batch, divided by ``pixels`` = D = C*H*W. L_e is a mean over the D pixel values, so
    gamma L_e + L_n = (gamma sum|x - x_v| + KL) / D: the per-image ELBO of a Laplace decoder of
    scale 1/gamma, scaled by 1/D like every other term (docs/model.md, "The loss convention");
    ``mean``: the mean over batch and latent dimensions (the earlier reading; with L_e's mean over
    pixels the encoder is a beta-VAE with beta = D / (gamma h), and the posterior collapses);
    ``sum_latent``: the per-image KL averaged over the batch (beta = D / gamma against L_e).

    ``free_nats`` > 0 (``elbo`` and ``sum_latent``) floors the batch's mean KL per image at that
    many nats: below it the encoder pays nothing (free bits, Kingma et al. 2016).
    """
    if reduction == "mean":
        return kl_per_dimension(mu, logvar).mean()
    if reduction not in ("elbo", "sum_latent"):
        raise ValueError(f"unknown KL reduction {reduction!r}: use elbo, mean or sum_latent")
    kl = kl_per_image(mu, logvar).mean()
    if free_nats > 0:
        kl = kl.clamp(min=free_nats)
    if reduction == "sum_latent":
        return kl
    if not pixels:
        raise ValueError("the 'elbo' KL reduction needs the number of pixel values D = C*H*W (pixels=...)")
    return kl / pixels


def kl_warmup_weight(iteration: int, warmup: int) -> float:
    """The weight of L_n in L_enc at ``iteration`` (1, 2, ...): rising linearly from 1/warmup to 1
    over ``warmup`` iterations (0 = always 1), as in Bowman et al.'s KL annealing."""
    return 1.0 if warmup <= 0 else min(1.0, iteration / warmup)


def reconstruction_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """Eq. 7: the discriminator's reconstruction loss of one kind of input.

    L_d = mean |x - x'_d|, L_g = mean |x_g - x'_g| (the paper prints x - x'_g, a typo),
    L_v = mean |x_v - x'_v|.
    """
    return l1(x, x_rec)


def similarity_loss(z_d: Tensor, z_v: Tensor, normalize: bool = False) -> Tensor:
    """Eq. 9: L_s = mean |z_d - z'_v|, the learned similarity metric (LSM).

    z_d codes the real images and z'_v their VAE reconstructions, pair by pair. The discriminator's
    codes have no fixed scale (they drift to |z| of several units while the image losses are about
    0.1); ``normalize`` divides each image's mean |z_d - z'_v| by its own mean |z_d| (not
    differentiated), so L_s is a relative error, and a mean over images as under DDP's slices.
    """
    if not normalize:
        return l1(z_d, z_v)
    z_d, z_v = z_d.float(), z_v.float()
    scale = z_d.detach().abs().mean(dim=1).clamp(min=1e-8)
    return ((z_d - z_v).abs().mean(dim=1) / scale).mean()


def feature_matching_similarity_loss(z_d: Tensor, z_g: Tensor) -> Tensor:
    """L_s for BEGAN* + LSM, where the paper leaves L_s undefined (no VAE, so no pairs).

    This project's decision (SPEC.md, docs/model.md "Model variants"): the L1 distance between the
    batch means of the discriminator codes of real images z_d and of random samples z'_g,
    averaged over latent dimensions. It is Eq. 9 with each pair replaced by its batch mean.
    """
    return l1(z_d.mean(dim=0), z_g.mean(dim=0))


Weights = dict[str, "float | Tensor"]


def objective_table(alpha: float, beta: float, gamma: float, k: float | Tensor,
                    kl_weight: float = 1.0) -> tuple[dict[str, Weights], dict[str, Weights]]:
    """Eqs. 13-15, stated once: (parts, objectives). Each part is a weighted sum of loss terms,
    each network's objective a weighted sum of parts:

        L_dis = L_d - k_{t-1} A   (Eq. 13),   L_gen = A + C   (Eq. 14),   L_enc = L_n + C   (Eq. 15),
        A = L_g + alpha L_v (the adversarial part),   C = beta L_s + gamma L_e (the shared part).

    L_n is weighted by ``kl_weight`` during a KL warm-up. The parts are what the networks share, so
    the training step can differentiate each once for all its networks (``vaegan.training.routing``).
    """
    parts = {"A": {"L_g": 1, "L_v": alpha}, "L_d": {"L_d": 1}, "C": {"L_s": beta, "L_e": gamma}, "L_n": {"L_n": 1}}
    objectives = {"discriminator": {"L_d": 1, "A": -k}, "generator": {"A": 1, "C": 1}, "encoder": {"L_n": kl_weight, "C": 1}}
    return parts, objectives


def weighted_sum(weights: Weights, values: dict[str, Tensor]) -> Tensor | None:
    """sum_i w_i v_i over the values present (a variant lacks some terms); None when none is.
    A weight of exactly 1 (the int) adds the value itself."""
    total = None
    for name, w in weights.items():
        if name in values:
            v = values[name] if isinstance(w, int) and w == 1 else w * values[name]
            total = v if total is None else total + v
    return total


def objectives(terms: dict[str, Tensor], alpha: float, beta: float, gamma: float, k: float | Tensor,
               kl_weight: float = 1.0) -> dict[str, Tensor]:
    """Eqs. 13-15 from the loss terms present: network -> its objective (``objective_table``)."""
    return evaluate(*objective_table(alpha, beta, gamma, k, kl_weight), terms)


def evaluate(parts: dict[str, Weights], table: dict[str, Weights], terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each network's objective of ``table`` from the loss terms present (networks with none are left out)."""
    values = {name: v for name, part in parts.items() if (v := weighted_sum(part, terms)) is not None}
    return {net: obj for net, row in table.items() if (obj := weighted_sum(row, values)) is not None}


def discriminator_objective(L_d: Tensor, L_g: Tensor, L_v: Tensor, k: float, alpha: float) -> Tensor:
    """Eq. 13: L_dis = L_d - k_{t-1} (L_g + alpha L_v)."""
    return objectives(dict(L_d=L_d, L_g=L_g, L_v=L_v), alpha, 0.0, 0.0, k)["discriminator"]


def generator_objective(
    L_g: Tensor, L_v: Tensor, L_s: Tensor, L_e: Tensor, alpha: float, beta: float, gamma: float
) -> Tensor:
    """Eq. 14: L_gen = L_g + alpha L_v + beta L_s + gamma L_e."""
    return objectives(dict(L_g=L_g, L_v=L_v, L_s=L_s, L_e=L_e), alpha, beta, gamma, 0.0)["generator"]


def encoder_objective(L_n: Tensor, L_s: Tensor, L_e: Tensor, beta: float, gamma: float,
                      kl_weight: float = 1.0) -> Tensor:
    """Eq. 15: L_enc = L_n + beta L_s + gamma L_e (L_n weighted by ``kl_weight`` during a KL warm-up)."""
    return objectives(dict(L_n=L_n, L_s=L_s, L_e=L_e), 0.0, beta, gamma, 0.0, kl_weight)["encoder"]


def equilibrium_error(L_d: Tensor, L_g: Tensor, L_v: Tensor, eta: float, alpha: float) -> Tensor:
    """Eq. 11: e_t = eta L_d - (L_g + alpha L_v).

    The paper prints ``eta L_d - L_g + alpha L_v``; Eq. 10 and the convergence measure fix the sign.
    """
    return eta * L_d - (L_g + alpha * L_v)


def convergence_measure(L_d: Tensor, L_g: Tensor, L_v: Tensor, eta: float, alpha: float) -> Tensor:
    """M = L_d + |eta L_d - L_g - alpha L_v| (Sec. 3.4): falls as training converges."""
    return L_d + equilibrium_error(L_d, L_g, L_v, eta, alpha).abs()
