"""The LightningModule: four networks, three Adam optimizers, Algorithm 1 as the training step.

The gradient machinery lives beside it, in ``vaegan.training``: ``routing`` (which network is
differentiated on which loss), ``sync`` (the DDP all-reduce), ``guard`` and ``ema``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from vaegan import compat
from vaegan.config.schema import DataConfig, ModelConfig, TrainConfig
from vaegan.models import losses
from vaegan.models.networks import Decoder, Discriminator, VAEEncoder
from vaegan.training import checkpoints, distributed, ema, logged, performance, routing, sync
from vaegan.training.guard import DivergenceGuard
from vaegan.training.lr_decay import LearningRateDecay

# ModelConfig keys whose flat hyper-parameter (as every checkpoint stores it) has another name.
FLAT_NAMES = {"name": "variant", "ema.decay": "ema_decay", "ema.start": "ema_start"}
NOT_THE_MODULES = ("controller",)  # the PID controller's gains belong to its callback (PIDUpdate)


def flat_hyper_parameters(model: ModelConfig | DictConfig | dict | None = None) -> dict[str, Any]:
    """The module's flat hyper-parameters from a model config (the schema's defaults for missing keys):
    each leaf under its own name, a group's leaves (``optimizer.lr``) under theirs, ``FLAT_NAMES`` renamed;
    ``optimizer.clip`` and ``optimizer.lr_decay`` stay dicts."""
    config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ModelConfig), model or {}))
    flat = {}
    for key, value in config.items():
        if key in NOT_THE_MODULES:
            continue
        group = value if isinstance(value, dict) and key in ("optimizer", "ema", "guard") else {None: value}
        for sub, leaf in group.items():
            path = key if sub is None else f"{key}.{sub}"
            flat[FLAT_NAMES.get(path, path.split(".")[-1])] = leaf
    return flat


def images_of(batch: Any) -> Tensor:
    """Batches are images or (images, labels)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class VAEGANModule(L.LightningModule):
    """VAE + BEGAN* + LSM (the full model) and its ablations, in one code path.

    ``model`` is the typed model config (``cfg.model``, schema ``ModelConfig``): ``vae`` adds the
    encoder F_vae-e (the generator then also decodes z_v), ``discriminator`` the auto-encoder
    discriminator, ``lsm`` the similarity loss L_s. A term a variant lacks is absent from Eqs. 13-15.
    Each network has its own Adam optimizer and is stepped only on its own objective. Keyword
    ``hparams`` override it in the flat form a checkpoint stores (``width=8``, ``lr=1e-3``).

    One *iteration* (the paper's unit) is one batch: ``len(self.networks)`` optimizer steps
    (``checkpoints.iterations_done``).

    The VAE's loss convention (docs/model.md): ``kl_reduction`` reduces L_n (``losses.kl_loss``),
    with ``free_nats`` as a floor on the KL per image; ``kl_warmup`` ramps L_n's weight in L_enc from
    0 to 1 over that many iterations; ``logvar_init`` starts sigma_v small (``networks.VAEEncoder``);
    ``lsm_normalize`` makes L_s relative to the codes' scale. ``lr_decay`` is BEGAN's learning-rate
    decay (``LearningRateDecay``).

    Around Algorithm 1: ``clip`` caps each network's gradient norm (by name; None = no cap);
    ``DivergenceGuard`` skips iterations with non-finite losses or gradients; with ``ema_decay``
    > 0 an exponential moving average of the generator, started after ``ema_start`` iterations,
    makes every output (``output_generator``). Under DDP the step averages losses and gradients
    over the ranks itself (``vaegan.training.sync``).
    """

    def __init__(self, model: ModelConfig | DictConfig | dict | None = None, *, image_size: int = DataConfig.image_size,
                 channels: int = DataConfig.channels, seed: int = TrainConfig.seed, **hparams: Any):
        super().__init__()
        flat = flat_hyper_parameters(model)
        unknown = sorted(set(hparams) - set(flat))
        if unknown:
            raise TypeError(f"VAEGANModule: unknown hyper-parameters {unknown}; the model's are {sorted(flat)}")
        hp = {"image_size": image_size, "channels": channels, **flat, **hparams, "seed": seed}
        if not (hp["vae"] or hp["discriminator"]):
            raise ValueError(f"model {hp['variant']!r}: needs a VAE encoder, a discriminator, or both")
        self.save_hyperparameters(hp)
        self.automatic_optimization = False
        shape = dict(image_size=image_size, channels=channels, width=hp["width"], latent_dim=hp["latent_dim"])
        self.encoder = VAEEncoder(**shape, logvar_init=hp["logvar_init"]) if hp["vae"] else None
        self.generator = Decoder(**shape)
        self.discriminator = Discriminator(**shape) if hp["discriminator"] else None
        self.generator_ema = ema.average_of(self.generator) if hp["ema_decay"] > 0 else None
        self.guard = DivergenceGuard(hp["max_bad_in_a_row"])  # a submodule: its counters follow the model's device
        self.k: float | Tensor = 0.0  # k_{t-1}, a tensor on the device; set each iteration by PIDUpdate
        self.performance = performance.Performance()  # how iterations run: set before fit, applied at its start
        self.memory_format = torch.contiguous_format
        self.train_precision = "32-true"  # trainer.precision of the training so far (metrics protocols record it)
        self.lr_decay = LearningRateDecay(**(hp["lr_decay"] or {}))

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
        return module.to(map_location), checkpoints.iterations_done(ckpt.get("global_step", 0), len(module.networks))

    # ----------------------------------------------------------------- public API
    @property
    def networks(self) -> dict[str, nn.Module]:
        """The trained networks in optimizer order: encoder, generator, discriminator."""
        nets = {"encoder": self.encoder, "generator": self.generator, "discriminator": self.discriminator}
        return {name: net for name, net in nets.items() if net is not None}

    @property
    def iteration(self) -> int:
        """Completed iterations (batches) of Algorithm 1."""
        return checkpoints.iterations_done(self.global_step, len(self.networks))

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
        return ema.output_generator(self.generator_ema, self.generator)

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
            through_d = self.discriminate_each({"d": x, "g": x_g, **({"v": x_v} if self.encoder is not None else {})})
            (z_d, x_d), (z_g, x_g_rec) = through_d["d"], through_d["g"]
            terms["L_d"] = losses.reconstruction_loss(x, x_d)
            terms["L_g"] = losses.reconstruction_loss(x_g, x_g_rec)
            if self.encoder is not None:
                z_v, x_v_rec = through_d["v"]
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

    def objective_table(self, dtype: torch.dtype) -> tuple[dict, dict]:
        """Eqs. 13-15 (``losses.objective_table``) with this iteration's k_{t-1} and KL weight."""
        hp = self.hparams
        k = self.k.to(dtype) if isinstance(self.k, Tensor) else self.k  # the controller keeps it in float64
        kl_weight = losses.kl_warmup_weight(self.iteration + 1, hp.kl_warmup)
        return losses.objective_table(hp.alpha, hp.beta, hp.gamma, k, kl_weight)

    def objectives(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Eqs. 13-15 for the networks this variant has."""
        objectives = losses.evaluate(*self.objective_table(next(iter(terms.values())).dtype), terms)
        return {net: objectives[net] for net in self.networks}

    def compute_gradients(self, terms: dict[str, Tensor]) -> None:
        """The gradient of each network's own objective (Eqs. 13-15), all taken before any step:
        in the passes the objectives share (``performance.shared_backward``), else one per objective
        (``vaegan.training.routing``)."""
        if self.performance.shared_backward:
            parts, table = self.objective_table(next(iter(terms.values())).dtype)
            passes = routing.shared_passes(terms, parts, table, list(self.networks))
        else:
            passes = routing.per_objective_passes(self.objectives(terms), list(self.networks))
        routing.backward(self, passes)

    def error_and_convergence(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """e_t (Eq. 11) and the convergence measure M, for models with a discriminator."""
        if self.discriminator is None:
            return {}
        L_d, L_g = terms["L_d"], terms["L_g"]
        L_v = terms.get("L_v", torch.zeros_like(L_d))
        args = (L_d.detach(), L_g.detach(), L_v.detach(), self.hparams.eta, self.hparams.alpha)
        return {"e": losses.equilibrium_error(*args), "M": losses.convergence_measure(*args)}

    def step_networks(self, norms: dict[str, Tensor], stepped: Tensor | None = None) -> None:
        """Algorithm 1, lines 8, 11, 13: each optimizer steps on its network's (clipped) gradient,
        unless ``stepped`` is False (``routing.step``)."""
        routing.step(self.networks, self.optimizer_list(), norms, self.hparams.clip or {}, stepped)

    def optimizer_list(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def is_logging_iteration(self, iteration: int | None = None) -> bool:
        """Whether iteration ``iteration`` (default: the last completed) is one of every
        ``trainer.log_every_n_steps``: the only iterations that read values from the device."""
        every = max(1, getattr(compat.attached_trainer(self), "log_every_n_steps", 1))
        return (self.iteration if iteration is None else iteration) % every == 0

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """One iteration of Algorithm 1, with no read from the device except every
        ``log_every_n_steps`` iterations."""
        x = images_of(batch).contiguous(memory_format=self.memory_format)
        iteration = self.iteration + 1
        noise = self.draw_noise(x.shape[0], iteration - 1)  # line 3: eps for Z_v; line 4: Z_g ~ N(0, I)
        terms = self.compute_losses(x, noise)  # lines 3-10: forwards, L_e, L_n, L_s, L_g, L_d, L_v
        self.compute_gradients(terms)  # gradients of Eqs. 13-15, before any step
        terms, norms = sync.synchronize(terms, self.networks)  # many ranks: their means, identical everywhere
        stats = self.error_and_convergence(terms)  # line 12: e_t (k_t is updated by PIDUpdate)
        stepped = self.guard.record(iteration, {**terms, **{f"gradient of the {n}": v for n, v in norms.items()}})
        self.step_networks(norms, stepped)  # lines 8, 11, 13: step θe, θd, θe' and θd' (unless not finite)
        if self.generator_ema is not None and iteration > self.hparams.ema_start:
            ema.update(self.generator_ema, self.generator, self.hparams.ema_decay, stepped)
        self.lr_decay.step(self, iteration, stats.get("M"))  # BEGAN's decay, when configured
        if self.is_logging_iteration(iteration):
            self.guard.poll()  # warns about skipped iterations; raises DivergenceError
            self.log_dict({logged.train(name): value for name, value in {**terms, **stats}.items()})
            self.log_dict({logged.grad_norm(name): value for name, value in norms.items()})
            self.log(logged.SKIPPED, self.guard.counters[0].float())
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
