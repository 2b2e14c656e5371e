"""The full model's iteration written the straightforward way, in plain PyTorch: the reference
that ``bench_step.py`` measures the framework against and ``tests/training/test_step.py`` checks it with.

Same networks, losses and noise as ``vaegan`` (Algorithm 1, all gradients taken before any
step), but done as one would at first: the discriminator's loss is computed again on detached
copies of x_g and x_v (two more discriminator passes), each loss and e_t are read on the host
every iteration (``.item()``), the controller runs on Python floats, Adam uses PyTorch's default
implementation and the tensors keep their default (NCHW) layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaegan.models import losses
from vaegan.models.controller import PIDController
from vaegan.models.networks import Decoder, Discriminator, VAEEncoder


class NaiveVAEGAN:
    """VAE + BEGAN* + LSM with three Adam optimizers, stepped by ``step(x, eps, z_g)``. The forward
    passes run in the order of ``VAEGANModule.compute_losses``: autograd sums a tensor's gradient
    contributions in the order its graph was built, so this order makes the gradients bit-identical."""

    def __init__(self, image_size: int, channels: int, width: int, latent_dim: int, alpha: float = 0.3,
                 beta: float = 0.1, gamma: float = 0.1, eta: float = 0.5, lr: float = 5e-5,
                 betas: tuple[float, float] = (0.5, 0.999), controller: dict | None = None, fused: bool | None = None,
                 kl_reduction: str = "elbo", lsm_normalize: bool = True):
        shape = dict(image_size=image_size, channels=channels, width=width, latent_dim=latent_dim)
        self.encoder, self.generator, self.discriminator = VAEEncoder(**shape), Decoder(**shape), Discriminator(**shape)
        self.alpha, self.beta, self.gamma, self.eta = alpha, beta, gamma, eta
        self.kl_reduction, self.lsm_normalize = kl_reduction, lsm_normalize  # the loss convention (docs/model.md)
        self.optimizers = [torch.optim.Adam(net.parameters(), lr=lr, betas=betas, fused=fused) for net in self.networks]
        self.controller = PIDController(**(controller or {}))
        self.history: list[dict[str, float]] = []

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.encoder, self.generator, self.discriminator]

    def step(self, x: Tensor, eps: Tensor, z_g: Tensor) -> None:
        E, G, D = self.encoder, self.generator, self.discriminator
        a, b, c, k = self.alpha, self.beta, self.gamma, self.controller.k.item()
        mu, logvar = E(x)
        x_v = G(losses.reparameterize(mu, logvar, eps))
        L_e, L_n = losses.content_loss(x, x_v), losses.kl_loss(mu, logvar, self.kl_reduction, x[0].numel())
        x_g = G(z_g)
        z_d, x_d = D(x)
        _, x_g_rec = D(x_g)
        z_v, x_v_rec = D(x_v)
        L_d = losses.reconstruction_loss(x, x_d)
        L_g, L_v = losses.reconstruction_loss(x_g, x_g_rec), losses.reconstruction_loss(x_v, x_v_rec)
        L_s = losses.similarity_loss(z_d, z_v, self.lsm_normalize)
        L_gen = losses.generator_objective(L_g, L_v, L_s, L_e, a, b, c)
        L_enc = losses.encoder_objective(L_n, L_s, L_e, b, c)
        x_g_fixed, x_v_fixed = x_g.detach(), x_v.detach()  # the discriminator's own loss, on fixed inputs
        L_dis = losses.discriminator_objective(
            L_d, losses.reconstruction_loss(x_g_fixed, D(x_g_fixed)[1]),
            losses.reconstruction_loss(x_v_fixed, D(x_v_fixed)[1]), k, a)
        grads = [torch.autograd.grad(L_enc, list(E.parameters()), retain_graph=True),
                 torch.autograd.grad(L_gen, list(G.parameters()), retain_graph=True),
                 torch.autograd.grad(L_dis, list(D.parameters()))]
        for net, opt, net_grads in zip(self.networks, self.optimizers, grads):
            for p, g in zip(net.parameters(), net_grads):
                p.grad = g
            opt.step()
        e = losses.equilibrium_error(L_d, L_g, L_v, self.eta, a).item()
        self.controller.update(e)
        self.history.append({name: value.item() for name, value in
                             dict(L_e=L_e, L_n=L_n, L_d=L_d, L_g=L_g, L_v=L_v, L_s=L_s).items()} | {"e": e})
