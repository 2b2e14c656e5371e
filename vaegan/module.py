"""The LightningModule: four networks, three Adam optimizers, Algorithm 1 as the training step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaegan import checkpoints, distributed, losses
from vaegan.guard import DivergenceGuard
from vaegan.networks import Decoder, Discriminator, VAEEncoder


def images_of(batch: Any) -> Tensor:
    """Batches are images or (images, labels)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class VAEGANModule(L.LightningModule):
    """VAE + BEGAN* + LSM (the full model) and its ablations, in one code path.

    ``vae`` adds the encoder F_vae-e (the generator then also decodes z_v), ``discriminator`` the
    auto-encoder discriminator, ``lsm`` the similarity loss L_s. A term a variant lacks is zero in
    Eqs. 13-15. Each network has its own Adam optimizer and is stepped only on its own objective.

    One *iteration* (the paper's unit) is one batch: ``len(self.networks)`` optimizer steps, so
    ``iteration = global_step // len(self.networks)``.

    Around Algorithm 1: ``clip`` caps each network's gradient norm (by name; None = no cap);
    ``DivergenceGuard`` skips iterations with non-finite losses or gradients; with ``ema_decay``
    > 0 an exponential moving average of the generator, started after ``ema_start`` iterations,
    makes every output (``output_generator``). Under DDP the step averages losses and gradients
    over the ranks itself (``vaegan.distributed``).
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        width: int = 64,
        latent_dim: int = 64,
        vae: bool = True,
        discriminator: bool = True,
        lsm: bool = True,
        alpha: float = 0.3,
        beta: float = 0.1,
        gamma: float = 0.1,
        eta: float = 0.5,
        kl_reduction: losses.KLReduction = "mean",
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.5, 0.999),
        seed: int = 0,
        variant: str = "vaegan",
        ema_decay: float = 0.0,
        ema_start: int = 0,
        clip: dict[str, float | None] | None = None,
        max_bad_in_a_row: int = 10,
    ):
        super().__init__()
        if not (vae or discriminator):
            raise ValueError(f"model {variant!r}: needs a VAE encoder, a discriminator, or both")
        self.save_hyperparameters()
        self.automatic_optimization = False
        shape = dict(image_size=image_size, channels=channels, width=width, latent_dim=latent_dim)
        self.encoder = VAEEncoder(**shape) if vae else None
        self.generator = Decoder(**shape)
        self.discriminator = Discriminator(**shape) if discriminator else None
        self.generator_ema = None
        if ema_decay > 0:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.generator_ema.requires_grad_(False)
        self.guard = DivergenceGuard(max_bad_in_a_row)
        self.k = 0.0  # k_{t-1}; set each iteration by EquilibriumCallback

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple["VAEGANModule", int]:
        """The trained model of a checkpoint (read with ``weights_only=True``: no code runs) and its
        iteration; raises CheckpointError (a ValueError) naming the problem for files that are not such
        checkpoints."""
        ckpt = checkpoints.load(path)
        module = cls(**ckpt["hyper_parameters"])
        try:
            module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise checkpoints.CheckpointError(f"{path}: weights do not match model {module.hparams.variant!r}: {str(err)[:300]}") from None
        return module.to(map_location), int(ckpt.get("global_step", 0)) // len(module.networks)

    # ----------------------------------------------------------------- public API
    @property
    def networks(self) -> dict[str, nn.Module]:
        """The trained networks in optimizer order: encoder, generator, discriminator."""
        nets = {"encoder": self.encoder, "generator": self.generator, "discriminator": self.discriminator}
        return {name: net for name, net in nets.items() if net is not None}

    @property
    def iteration(self) -> int:
        """Completed iterations (batches) of Algorithm 1."""
        return self.global_step // len(self.networks)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (mu_v, logvar_v) through F_vae-e."""
        if self.encoder is None:
            raise RuntimeError(
                f"the {self.hparams.variant!r} model has no encoder; encoding needs model=vaegan or model=vae"
            )
        return self.encoder(x)

    @property
    def output_generator(self) -> nn.Module:
        """The generator of every output (samples, panels, evaluation, latent editing): the EMA copy
        once it averages (``ema_decay`` > 0, after ``ema_start`` iterations), else the trained one."""
        ema = self.generator_ema
        return ema.module if ema is not None and int(ema.n_averaged) > 0 else self.generator

    @property
    def output_weights(self) -> str:
        """``ema`` or ``raw``: which weights ``output_generator`` holds (recorded in metrics protocols)."""
        return "ema" if self.output_generator is not self.generator else "raw"

    def decode(self, z: Tensor) -> Tensor:
        """z -> image through the generator F_vae-d (``output_generator``)."""
        return self.output_generator(z)

    def discriminate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (z, x') through the auto-encoder discriminator (Eq. 8)."""
        if self.discriminator is None:
            raise RuntimeError(f"the {self.hparams.variant!r} model has no discriminator")
        return self.discriminator(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n random images x_g = F_vae-d(z_g), z_g ~ N(0, I)."""
        z = torch.randn(n, self.hparams.latent_dim, generator=generator, device=self.device)
        return self.decode(z)

    # ------------------------------------------------------------- Algorithm 1
    def draw_noise(self, batch_size: int, iteration: int) -> dict[str, Tensor]:
        """eps for Eq. 4 and z_g ~ N(0, I), from a generator seeded by (seed, iteration): drawn for
        the global batch of all ranks, of which this rank takes its share, so N ranks draw what one
        process with N times the batch would."""
        gen = torch.Generator(device=self.device).manual_seed(self.hparams.seed * 1_000_003 + iteration)
        rank, world = distributed.rank_and_world()
        shape = (batch_size * world, self.hparams.latent_dim)
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        noise = {}
        if self.encoder is not None:
            noise["eps"] = torch.randn(shape, generator=gen, device=self.device)[mine]
        if self.discriminator is not None:
            noise["z_g"] = torch.randn(shape, generator=gen, device=self.device)[mine]
        return noise

    def compute_losses(self, x: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """Algorithm 1, lines 3-10: every forward pass and loss term of one iteration."""
        hp = self.hparams
        terms: dict[str, Tensor] = {}
        if self.encoder is not None:
            mu, logvar = self.encoder(x)
            x_v = self.generator(losses.reparameterize(mu, logvar, noise["eps"]))
            terms["L_e"] = losses.content_loss(x, x_v)
            terms["L_n"] = losses.kl_loss(mu, logvar, hp.kl_reduction)
        if self.discriminator is not None:
            x_g = self.generator(noise["z_g"])
            z_d, x_d = self.discriminator(x)
            z_g, x_g_rec = self.discriminator(x_g)
            terms["L_d"] = losses.reconstruction_loss(x, x_d)
            terms["L_g"] = losses.reconstruction_loss(x_g, x_g_rec)
            if self.encoder is not None:
                z_v, x_v_rec = self.discriminator(x_v)
                terms["L_v"] = losses.reconstruction_loss(x_v, x_v_rec)
                if hp.lsm:
                    terms["L_s"] = losses.similarity_loss(z_d, z_v)
            elif hp.lsm:
                terms["L_s"] = losses.feature_matching_similarity_loss(z_d, z_g)
        return terms

    def objectives(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Eqs. 13-15 for the networks this variant has; missing terms count as zero."""
        hp = self.hparams
        zero = next(iter(terms.values())).new_zeros(())
        L_n, L_s, L_e, L_d, L_g, L_v = (terms.get(n, zero) for n in ("L_n", "L_s", "L_e", "L_d", "L_g", "L_v"))
        objectives = {"generator": losses.generator_objective(L_g, L_v, L_s, L_e, hp.alpha, hp.beta, hp.gamma)}
        if self.encoder is not None:
            objectives["encoder"] = losses.encoder_objective(L_n, L_s, L_e, hp.beta, hp.gamma)
        if self.discriminator is not None:
            objectives["discriminator"] = losses.discriminator_objective(L_d, L_g, L_v, self.k, hp.alpha)
        return objectives

    def equilibrium(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """e_t (Eq. 11) and the convergence measure M, for models with a discriminator."""
        if self.discriminator is None:
            return {}
        L_d, L_g = terms["L_d"], terms["L_g"]
        L_v = terms.get("L_v", torch.zeros_like(L_d))
        args = (L_d.detach(), L_g.detach(), L_v.detach(), self.hparams.eta, self.hparams.alpha)
        return {"e": losses.equilibrium_error(*args), "M": losses.convergence_measure(*args)}

    def compute_gradients(self, objectives: dict[str, Tensor]) -> None:
        """The gradient of each network's own objective (Eqs. 13-15), all taken before any step.

        ``backward(inputs=...)`` restricts every objective's gradient to its own network, so the
        discriminator never sees L_gen's gradient, the generator never sees L_dis's, and the
        discriminator's gradient equals that of L_dis with the generator's outputs detached.
        """
        for opt in self.optimizer_list():
            opt.zero_grad(set_to_none=True)
        names = list(self.networks)
        for i, name in enumerate(names):
            params = list(self.networks[name].parameters())
            self.manual_backward(objectives[name], inputs=params, retain_graph=i < len(names) - 1)

    def synchronize(self, terms: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The loss terms and gradients as means over all ranks (one all-reduce; nothing to do in one
        process), then each network's gradient norm."""
        stacked = torch.stack([value.detach().float() for value in terms.values()])
        grads = [p.grad for net in self.networks.values() for p in net.parameters() if p.grad is not None]
        distributed.average_across_ranks([*grads, stacked])
        norms = {name: get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
                 for name, net in self.networks.items()}
        return dict(zip(terms, stacked.unbind())), norms

    def step_networks(self, norms: dict[str, Tensor] | None) -> None:
        """Algorithm 1, lines 8, 11, 13: each optimizer steps on its network's gradient, clipped to
        ``clip[name]`` when set. ``norms=None`` skips the iteration: with the gradients dropped,
        Adam leaves weights and moments as they were, and Lightning still counts the step."""
        clip = self.hparams.clip or {}
        for (name, net), opt in zip(self.networks.items(), self.optimizer_list()):
            if norms is None:
                opt.zero_grad(set_to_none=True)
            elif clip.get(name):
                clip_grads_with_norm_(net.parameters(), clip[name], norms[name])
            opt.step()

    def optimizer_list(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def update_ema(self, iteration: int) -> None:
        if self.generator_ema is not None and iteration > self.hparams.ema_start:
            self.generator_ema.update_parameters(self.generator)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """One iteration of Algorithm 1."""
        x = images_of(batch)
        iteration = self.iteration + 1
        noise = self.draw_noise(x.shape[0], iteration - 1)  # line 3: eps for Z_v; Z_g ~ N(0, I)
        terms = self.compute_losses(x, noise)  # lines 3-10: forwards, L_e, L_n, L_s, L_g, L_d, L_v
        self.compute_gradients(self.objectives(terms))  # gradients of Eqs. 13-15, before any step
        terms, norms = self.synchronize(terms)  # many ranks: their means, identical everywhere
        stats = self.equilibrium(terms)  # line 12: e_t (k_t is updated by EquilibriumCallback)
        finite = self.guard.check(iteration, {**terms, **{f"gradient of the {n}": v for n, v in norms.items()}})
        self.step_networks(norms if finite else None)  # lines 8, 11, 13: step θe, θd, θe' and θd'
        if finite:
            self.update_ema(iteration)
        self.log_dict({f"train/{name}": value for name, value in terms.items()})
        self.log_dict({f"train/grad_norm_{name}": value for name, value in norms.items()})
        self.log("train/skipped_iterations", float(self.guard.skipped))
        if stats:
            self.log("train/e", stats["e"])
            self.log("train/M", stats["M"], prog_bar=True)
        return {**stats, "stepped": finite}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["divergence_guard"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "divergence_guard" in checkpoint:
            self.guard.load_state_dict(checkpoint["divergence_guard"])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [torch.optim.Adam(net.parameters(), lr=hp.lr, betas=tuple(hp.betas)) for net in self.networks.values()]
