"""The paper's equations, one function each (SPEC.md, "Losses" and "Objectives").

Every reconstruction loss is a mean absolute error. Each function takes tensors and returns a
0-dim tensor; the objectives (Eqs. 13-15) combine the terms and are differentiated per network
by the LightningModule.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLReduction = Literal["mean", "sum_latent"]


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


def kl_loss(mu: Tensor, logvar: Tensor, reduction: KLReduction = "mean") -> Tensor:
    """Eq. 3: L_n = KL(N(mu_v, sigma_v) || N(0, I)) in closed form.

    ``mean`` averages over batch and latent dimensions (this project's default, SPEC.md);
    ``sum_latent`` sums over the latent dimensions and averages over the batch (the usual ELBO).
    """
    mu, logvar = mu.float(), logvar.float()  # float32 under bf16 autocast too
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum_latent":
        return kl.sum(dim=1).mean()
    raise ValueError(f"unknown KL reduction {reduction!r}: use 'mean' or 'sum_latent'")


def reconstruction_loss(x: Tensor, x_rec: Tensor) -> Tensor:
    """Eq. 7: the discriminator's reconstruction loss of one kind of input.

    L_d = mean |x - x'_d|, L_g = mean |x_g - x'_g| (the paper prints x - x'_g, a typo),
    L_v = mean |x_v - x'_v|.
    """
    return l1(x, x_rec)


def similarity_loss(z_d: Tensor, z_v: Tensor) -> Tensor:
    """Eq. 9: L_s = mean |z_d - z'_v|, the learned similarity metric (LSM).

    z_d codes the real images and z'_v their VAE reconstructions, pair by pair.
    """
    return l1(z_d, z_v)


def feature_matching_similarity_loss(z_d: Tensor, z_g: Tensor) -> Tensor:
    """L_s for BEGAN* + LSM, where the paper leaves L_s undefined (no VAE, so no pairs).

    This project's decision (SPEC.md, README "Model variants"): the L1 distance between the
    batch means of the discriminator codes of real images z_d and of random samples z'_g,
    averaged over latent dimensions. It is Eq. 9 with each pair replaced by its batch mean.
    """
    return l1(z_d.mean(dim=0), z_g.mean(dim=0))


def discriminator_objective(L_d: Tensor, L_g: Tensor, L_v: Tensor, k: float, alpha: float) -> Tensor:
    """Eq. 13: L_dis = L_d - k_{t-1} (L_g + alpha L_v)."""
    return L_d - k * (L_g + alpha * L_v)


def generator_objective(
    L_g: Tensor, L_v: Tensor, L_s: Tensor, L_e: Tensor, alpha: float, beta: float, gamma: float
) -> Tensor:
    """Eq. 14: L_gen = L_g + alpha L_v + beta L_s + gamma L_e."""
    return L_g + alpha * L_v + beta * L_s + gamma * L_e


def encoder_objective(L_n: Tensor, L_s: Tensor, L_e: Tensor, beta: float, gamma: float) -> Tensor:
    """Eq. 15: L_enc = L_n + beta L_s + gamma L_e."""
    return L_n + beta * L_s + gamma * L_e


def adversarial_term(L_g: Tensor, L_v: Tensor, alpha: float) -> Tensor:
    """L_g + alpha L_v: what Eq. 13 weighs by -k_{t-1} for the discriminator and Eq. 14 by +1 for
    the generator, so one backward pass gives both networks their share."""
    return L_g + alpha * L_v


def shared_term(L_s: Tensor, L_e: Tensor, beta: float, gamma: float) -> Tensor:
    """beta L_s + gamma L_e: the part Eqs. 14 and 15 have in common (the generator's and the encoder's)."""
    return beta * L_s + gamma * L_e


def equilibrium_error(L_d: Tensor, L_g: Tensor, L_v: Tensor, eta: float, alpha: float) -> Tensor:
    """Eq. 11: e_t = eta L_d - (L_g + alpha L_v).

    The paper prints ``eta L_d - L_g + alpha L_v``; Eq. 10 and the convergence measure fix the sign.
    """
    return eta * L_d - (L_g + alpha * L_v)


def convergence_measure(L_d: Tensor, L_g: Tensor, L_v: Tensor, eta: float, alpha: float) -> Tensor:
    """M = L_d + |eta L_d - L_g - alpha L_v| (Sec. 3.4): falls as training converges."""
    return L_d + equilibrium_error(L_d, L_g, L_v, eta, alpha).abs()
