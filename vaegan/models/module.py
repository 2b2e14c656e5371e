"""The LightningModule: four networks, three Adam optimizers, Algorithm 1 as the training step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaegan.training import checkpoints, distributed, performance

from vaegan.models import losses
from vaegan.training.performance import Performance
from vaegan.training.guard import DivergenceGuard
from vaegan.training.lr_decay import LearningRateDecay
from vaegan.models.networks import Decoder, Discriminator, VAEEncoder


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

    The VAE's loss convention (README, "The loss convention"): ``kl_reduction`` reduces L_n
    (``losses.kl_loss``), with ``free_nats`` as a floor on the KL per image; ``kl_warmup`` ramps
    L_n's weight in L_enc from 0 to 1 over that many iterations; ``logvar_init`` starts sigma_v
    small (``networks.VAEEncoder``); ``lsm_normalize`` makes L_s relative to the codes' scale.
    ``lr_decay`` is BEGAN's learning-rate decay (``vaegan.training.lr_decay.LearningRateDecay``).

    Around Algorithm 1: ``clip`` caps each network's gradient norm (by name; None = no cap);
    ``DivergenceGuard`` skips iterations with non-finite losses or gradients; with ``ema_decay``
    > 0 an exponential moving average of the generator, started after ``ema_start`` iterations,
    makes every output (``output_generator``). Under DDP the step averages losses and gradients
    over the ranks itself (``vaegan.training.distributed``).
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
        kl_reduction: losses.KLReduction = "elbo",
        free_nats: float = 0.0,
        kl_warmup: int = 0,
        logvar_init: float | None = None,
        lsm_normalize: bool = True,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.5, 0.999),
        seed: int = 0,
        variant: str = "vaegan",
        ema_decay: float = 0.0,
        ema_start: int = 0,
        clip: dict[str, float | None] | None = None,
        max_bad_in_a_row: int = 10,
        lr_decay: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not (vae or discriminator):
            raise ValueError(f"model {variant!r}: needs a VAE encoder, a discriminator, or both")
        self.save_hyperparameters()
        self.automatic_optimization = False
        shape = dict(image_size=image_size, channels=channels, width=width, latent_dim=latent_dim)
        self.encoder = VAEEncoder(**shape, logvar_init=logvar_init) if vae else None
        self.generator = Decoder(**shape)
        self.discriminator = Discriminator(**shape) if discriminator else None
        self.generator_ema = None
        if ema_decay > 0:
            self.generator_ema = AveragedModel(self.generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.generator_ema.requires_grad_(False)
        self.guard = DivergenceGuard(max_bad_in_a_row)  # a submodule: its counters follow the model's device
        self.k: float | Tensor = 0.0  # k_{t-1}, a tensor on the device; set each iteration by EquilibriumCallback
        self.performance = Performance()  # how iterations run: set before fit, applied at its start
        self.memory_format = torch.contiguous_format
        self.train_precision = "32-true"  # trainer.precision of the training so far (metrics protocols record it)
        self.lr_decay = LearningRateDecay(**(lr_decay or {}))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> tuple["VAEGANModule", int]:
        """The trained model of a checkpoint (read with ``weights_only=True``: no code runs) and its
        iteration; raises CheckpointError (a ValueError) naming the problem for files that are not such
        checkpoints."""
        ckpt = checkpoints.load(path)
        module = cls(**checkpoints.saved_hyper_parameters(ckpt))
        module.train_precision = ckpt.get("train_precision", "32-true")
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
            terms["L_n"] = losses.kl_loss(mu, logvar, hp.kl_reduction, x[0].numel(), hp.free_nats)
        if self.discriminator is not None:
            x_g = self.generator(noise["z_g"])
            seen = self.discriminate_each({"d": x, "g": x_g, **({"v": x_v} if self.encoder is not None else {})})
            (z_d, x_d), (z_g, x_g_rec) = seen["d"], seen["g"]
            terms["L_d"] = losses.reconstruction_loss(x, x_d)
            terms["L_g"] = losses.reconstruction_loss(x_g, x_g_rec)
            if self.encoder is not None:
                z_v, x_v_rec = seen["v"]
                terms["L_v"] = losses.reconstruction_loss(x_v, x_v_rec)
                if hp.lsm:
                    terms["L_s"] = losses.similarity_loss(z_d, z_v, hp.lsm_normalize)
            elif hp.lsm:
                terms["L_s"] = losses.feature_matching_similarity_loss(z_d, z_g)
        return terms

    def discriminate_each(self, images: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """(z, x') of each batch of images, from one discriminator pass per batch or, with
        ``performance.batched_discriminator``, one pass over all of them."""
        if not self.performance.batched_discriminator:
            return {name: self.discriminator(x) for name, x in images.items()}
        sizes = [len(x) for x in images.values()]
        z, x_rec = self.discriminator(torch.cat(list(images.values())))
        return dict(zip(images, zip(z.split(sizes), x_rec.split(sizes))))

    def objectives(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Eqs. 13-15 for the networks this variant has; missing terms count as zero."""
        hp = self.hparams
        zero = next(iter(terms.values())).new_zeros(())
        L_n, L_s, L_e, L_d, L_g, L_v = (terms.get(n, zero) for n in ("L_n", "L_s", "L_e", "L_d", "L_g", "L_v"))
        k = self.k_in(zero.dtype)
        objectives = {"generator": losses.generator_objective(L_g, L_v, L_s, L_e, hp.alpha, hp.beta, hp.gamma)}
        if self.encoder is not None:
            objectives["encoder"] = losses.encoder_objective(L_n, L_s, L_e, hp.beta, hp.gamma, self.kl_weight())
        if self.discriminator is not None:
            objectives["discriminator"] = losses.discriminator_objective(L_d, L_g, L_v, k, hp.alpha)
        return objectives

    def kl_weight(self) -> float:
        """L_n's weight in L_enc this iteration (1 unless a KL warm-up is running)."""
        return losses.kl_warmup_weight(self.iteration + 1, self.hparams.kl_warmup)

    def k_in(self, dtype: torch.dtype) -> float | Tensor:
        """k_{t-1} in the losses' dtype (the controller keeps it in float64 on the device)."""
        return self.k.to(dtype) if isinstance(self.k, Tensor) else self.k

    def equilibrium(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """e_t (Eq. 11) and the convergence measure M, for models with a discriminator."""
        if self.discriminator is None:
            return {}
        L_d, L_g = terms["L_d"], terms["L_g"]
        L_v = terms.get("L_v", torch.zeros_like(L_d))
        args = (L_d.detach(), L_g.detach(), L_v.detach(), self.hparams.eta, self.hparams.alpha)
        return {"e": losses.equilibrium_error(*args), "M": losses.convergence_measure(*args)}

    def compute_gradients(self, terms: dict[str, Tensor]) -> None:
        """The gradient of each network's own objective (Eqs. 13-15), all taken before any step.

        ``backward(inputs=...)`` restricts every gradient to the networks it is for, so the
        discriminator never sees L_gen's gradient, the generator never sees L_dis's, and the
        discriminator's gradient equals that of L_dis with the generator's outputs detached.
        ``performance.shared_backward`` (the default) takes them in the passes the objectives share:

            grad_D L_dis = grad_D L_d - k grad_D A,   grad_G L_gen = grad_G A + grad_G C,
            grad_E L_enc = grad_E (L_n + C),   A = L_g + alpha L_v,   C = beta L_s + gamma L_e,

        so the discriminator's passes over x_g and x_v are traversed once for both networks; else
        there is one pass per objective (bit-identical to experiments/baseline.py).
        """
        for opt in self.optimizer_list():
            opt.zero_grad(set_to_none=True)
        if self.performance.shared_backward:
            passes = self.shared_passes(terms)
        else:
            objectives = self.objectives(terms)
            passes = [(objectives[name], [name], None) for name in self.networks]
        for i, (loss, names, scale_discriminator) in enumerate(passes):
            params = [p for name in names for p in self.networks[name].parameters()]
            self.manual_backward(loss, inputs=params, retain_graph=i < len(passes) - 1)
            if scale_discriminator is not None:  # the discriminator's first pass: its gradient so far is grad_D A
                torch._foreach_mul_([p.grad for p in self.discriminator.parameters()], scale_discriminator)

    def shared_passes(self, terms: dict[str, Tensor]) -> list[tuple[Tensor, list[str], Tensor | float | None]]:
        """(loss, networks it is differentiated for, factor of the discriminator's gradient) per pass."""
        hp = self.hparams
        zero = next(iter(terms.values())).new_zeros(())
        passes = []
        if self.discriminator is not None:
            k = self.k_in(zero.dtype)
            A = losses.adversarial_term(terms["L_g"], terms.get("L_v", zero), hp.alpha)
            passes += [(A, ["discriminator", "generator"], -k), (terms["L_d"], ["discriminator"], None)]
        if "L_s" in terms or "L_e" in terms:
            C = losses.shared_term(terms.get("L_s", zero), terms.get("L_e", zero), hp.beta, hp.gamma)
            if self.encoder is not None:
                passes.append((self.kl_weight() * terms["L_n"] + C, ["encoder", "generator"], None))
            else:
                passes.append((C, ["generator"], None))
        return passes

    def synchronize(self, terms: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The loss terms and gradients as means over all ranks (one all-reduce; nothing to do in one
        process), then each network's gradient norm."""
        stacked = torch.stack([value.detach().float() for value in terms.values()])
        grads = [p.grad for net in self.networks.values() for p in net.parameters() if p.grad is not None]
        distributed.average_across_ranks([*grads, stacked])
        norms = {name: get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
                 for name, net in self.networks.items()}
        return dict(zip(terms, stacked.unbind())), norms

    def step_networks(self, norms: dict[str, Tensor], stepped: Tensor | None = None) -> None:
        """Algorithm 1, lines 8, 11, 13: each optimizer steps on its network's gradient, clipped to
        ``clip[name]`` when set. Where ``stepped`` is False (read on the device by fused Adam's
        ``found_inf``) Adam leaves weights, moments and step counts as they were; Lightning still
        counts the step. Adam without a fused kernel for the device reads the flag from it."""
        clip = self.hparams.clip or {}
        for (name, net), opt in zip(self.networks.items(), self.optimizer_list()):
            if clip.get(name):
                clip_grads_with_norm_(net.parameters(), clip[name], norms[name])
            adam = getattr(opt, "optimizer", opt)  # Lightning wraps it
            if stepped is not None and adam.defaults.get("fused"):
                adam.found_inf = (~stepped).float()
            elif stepped is not None and not bool(stepped):
                opt.zero_grad(set_to_none=True)  # Adam skips parameters without gradients
            opt.step()
            adam.__dict__.pop("found_inf", None)

    def optimizer_list(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def update_ema(self, iteration: int, stepped: Tensor) -> None:
        """The EMA of the generator, as ``AveragedModel``'s EMA (the first update copies) but on the
        device: a skipped iteration changes nothing."""
        ema = self.generator_ema
        if ema is None or iteration <= self.hparams.ema_start:
            return
        current = [*self.generator.parameters(), *self.generator.buffers()]
        weight = (torch.where(ema.n_averaged == 0, 1.0, 1.0 - self.hparams.ema_decay) * stepped).to(current[0].dtype)
        for average, value in zip([*ema.module.parameters(), *ema.module.buffers()], current):
            average.detach().lerp_(value.detach(), weight)
        ema.n_averaged += stepped.long()

    def is_logging_iteration(self, iteration: int | None = None) -> bool:
        """Whether iteration ``iteration`` (default: the last completed) is one of every
        ``trainer.log_every_n_steps``: the only iterations that read values from the device."""
        every = max(1, getattr(self._trainer, "log_every_n_steps", 1))
        return (self.iteration if iteration is None else iteration) % every == 0

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """One iteration of Algorithm 1, with no read from the device except every
        ``log_every_n_steps`` iterations."""
        x = images_of(batch).contiguous(memory_format=self.memory_format)
        iteration = self.iteration + 1
        noise = self.draw_noise(x.shape[0], iteration - 1)  # line 3: eps for Z_v; Z_g ~ N(0, I)
        terms = self.compute_losses(x, noise)  # lines 3-10: forwards, L_e, L_n, L_s, L_g, L_d, L_v
        self.compute_gradients(terms)  # gradients of Eqs. 13-15, before any step
        terms, norms = self.synchronize(terms)  # many ranks: their means, identical everywhere
        stats = self.equilibrium(terms)  # line 12: e_t (k_t is updated by EquilibriumCallback)
        stepped = self.guard.record(iteration, {**terms, **{f"gradient of the {n}": v for n, v in norms.items()}})
        self.step_networks(norms, stepped)  # lines 8, 11, 13: step θe, θd, θe' and θd' (unless not finite)
        self.update_ema(iteration, stepped)
        self.lr_decay.step(self, iteration, stats.get("M"))  # BEGAN's decay, when configured
        if self.is_logging_iteration(iteration):
            self.guard.poll()  # warns about skipped iterations; raises DivergenceError
            self.log_dict({f"train/{name}": value for name, value in {**terms, **stats}.items()})
            self.log_dict({f"train/grad_norm_{name}": value for name, value in norms.items()})
            self.log("train/skipped_iterations", self.guard.counters[0].float())
        return {**stats, "stepped": stepped}

    def on_fit_start(self) -> None:
        self.train_precision = str(self.trainer.precision)
        performance.apply(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["divergence_guard"] = self.guard.checkpoint_state()
        checkpoint["train_precision"] = self.train_precision
        checkpoint["lr_decay"] = self.lr_decay.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "divergence_guard" in checkpoint:
            self.guard.load_checkpoint_state(checkpoint["divergence_guard"])
        if "lr_decay" in checkpoint:
            self.lr_decay.load_state_dict(checkpoint["lr_decay"])

    def configure_optimizers(self):
        hp = self.hparams
        optimizers = [adam(net.parameters(), lr=hp.lr, betas=tuple(hp.betas)) for net in self.networks.values()]
        schedulers = self.lr_decay.schedulers(optimizers)
        return (optimizers, schedulers) if schedulers else optimizers


FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")  # those of torch.optim's fused Adam


def adam(params, **kwargs) -> torch.optim.Adam:
    """Adam with the fused kernel where the device has one (CPU, CUDA, MPS, ...): one pass over the
    parameters, and a skipped iteration is decided on the device (``found_inf``)."""
    params = list(params)
    # Decided here: Adam checks the devices only at its first step, too late to fall back.
    fused = all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.Adam(params, fused=fused or None, **kwargs)
