"""The checks of a composed config that Hydra's types cannot express; ConfigError names the key."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vaegan.config.keys import unknown_keys
from vaegan.config.schema import KL_REDUCTIONS, WANDB_MODES, ConfigError, TrainConfig


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def validate(cfg: DictConfig) -> None:
    """Checks of values whose type alone is not enough; raises ConfigError naming the key."""
    m, d, c = cfg.model, cfg.data, cfg.model.controller
    unknown = unknown_keys(cfg, TrainConfig)
    if unknown:
        raise ConfigError("; ".join(unknown))
    _require(cfg.iterations > 0, "iterations", cfg.iterations, "must be a positive number of iterations")
    size = d.image_size
    _require(size >= 8 and size & (size - 1) == 0, "data.image_size", size, "must be a power of two >= 8 (16, 32, 64, 128)")
    _require(size <= MAX_IMAGE_SIZE, "data.image_size", size,
             f"is above the largest supported size, {MAX_IMAGE_SIZE}: one batch of activations at {size}x{size} "
             f"needs ~{activation_gib(size, m.width, d.batch_size):.0f} GiB (the paper goes up to 128)")
    _require(d.channels in (1, 3), "data.channels", d.channels, "must be 1 or 3")
    _require(d.batch_size > 0, "data.batch_size", d.batch_size, "must be positive")
    _require(0 <= d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must lie in [0, 1)")
    _require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0 (0 loads in the training process)")
    _require(d.worker_timeout >= 0, "data.worker_timeout", d.worker_timeout, "must be >= 0 seconds (0 = wait forever)")
    _require(d.on_bad_image in ("error", "skip"), "data.on_bad_image", d.on_bad_image, "use error or skip")
    _require(d.train_split in ("train", "all"), "data.train_split", d.train_split, "use train or all")
    _require(d.crop is None or d.crop > 0, "data.crop", d.crop, "must be a positive number of pixels")
    needs_root = d.name in ("celeba", "cifar10", "folder", "npz")
    _require(not needs_root or bool(d.root), "data.root", d.root, f"data={d.name} needs data.root (see docs/data.md)")
    _require(m.width > 0, "model.width", m.width, "must be positive")
    _require(m.latent_dim > 0, "model.latent_dim", m.latent_dim, "must be positive")
    _require(m.vae or m.discriminator, "model.vae", m.vae, "a model needs model.vae or model.discriminator")
    _require(m.kl_reduction in KL_REDUCTIONS, "model.kl_reduction", m.kl_reduction, f"use one of {', '.join(KL_REDUCTIONS)}")
    _require(m.free_nats >= 0, "model.free_nats", m.free_nats, "must be >= 0 nats per image (0 = no floor)")
    _require(m.free_nats == 0 or m.kl_reduction != "mean", "model.free_nats", m.free_nats,
             "is a floor on the KL per image, which model.kl_reduction=mean does not compute; use elbo or sum_latent")
    _require(m.kl_warmup >= 0, "model.kl_warmup", m.kl_warmup, "must be >= 0 iterations (0 = no warm-up)")
    decay = m.optimizer.lr_decay
    _require(decay.mode in (None, "step", "plateau"), "model.optimizer.lr_decay.mode", decay.mode, "use null, step or plateau")
    _require(0 < decay.factor <= 1, "model.optimizer.lr_decay.factor", decay.factor, "must lie in (0, 1] (BEGAN: 0.5)")
    _require(decay.every_n_iterations >= 1, "model.optimizer.lr_decay.every_n_iterations", decay.every_n_iterations, "must be >= 1")
    _require(decay.mode != "plateau" or m.discriminator, "model.optimizer.lr_decay.mode", decay.mode,
             "plateau follows M, which needs a discriminator; use step")
    for key in ("alpha", "beta", "gamma", "eta"):
        _require(m[key] >= 0, f"model.{key}", m[key], "must be >= 0")
    for key in ("ki", "kp", "kd"):
        _require(c[key] >= 0, f"model.controller.{key}", c[key], "gains must be >= 0")
    _require(c.smoothing >= 1, "model.controller.smoothing", c.smoothing, "must be >= 1 (1 = no smoothing)")
    _require(0 <= c.k_init <= 1, "model.controller.k_init", c.k_init, "must lie in [0, 1]")
    _require(m.optimizer.lr > 0, "model.optimizer.lr", m.optimizer.lr, "must be positive")
    for name, cap in m.optimizer.clip.items():
        _require(cap is None or cap > 0, f"model.optimizer.clip.{name}", cap, "must be a positive gradient norm, or null")
    _require(0 <= m.ema.decay < 1, "model.ema.decay", m.ema.decay, "must lie in [0, 1) (0 = no EMA; 0.999 is usual)")
    _require(m.ema.start >= 0, "model.ema.start", m.ema.start, "must be >= 0 iterations")
    _require(m.guard.max_bad_in_a_row >= 1, "model.guard.max_bad_in_a_row", m.guard.max_bad_in_a_row, "must be >= 1")
    betas = list(m.optimizer.betas)
    _require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "model.optimizer.betas", betas,
             "needs two values in [0, 1) (the paper: [0.5, 0.999])")
    _require(0 <= cfg.seed < 2**32, "seed", cfg.seed, "must lie in [0, 2^32) (numpy's seed range)")
    _require(0 <= d.split_seed < 2**32, "data.split_seed", d.split_seed, "must lie in [0, 2^32)")
    validate_trainer(cfg.trainer)
    compile_modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    _require(cfg.performance.compile in (None, *compile_modes), "performance.compile", cfg.performance.compile,
             f"use null (no compilation) or one of {', '.join(compile_modes)}")
    signals = list(cfg.callbacks.checkpoint.on_signals)
    _require(set(signals) <= set(SIGNALS), "callbacks.checkpoint.on_signals", signals, f"choose from {', '.join(SIGNALS)}")
    for key in ("checkpoint", "images"):
        n = cfg.callbacks[key].every_n_iterations
        _require(n >= 1, f"callbacks.{key}.every_n_iterations", n, "must be >= 1")
    im = cfg.callbacks.images
    _require(im.num_interpolations >= 0, "callbacks.images.num_interpolations", im.num_interpolations, ">= 0 (0 = none)")
    _require(im.interpolation_steps >= 2, "callbacks.images.interpolation_steps", im.interpolation_steps, "must be >= 2")
    lu = cfg.callbacks.latent_use
    _require(lu.num_images >= 2, "callbacks.latent_use.num_images", lu.num_images, "must be >= 2 (active units need a variance)")
    _require(lu.warn_after >= 0, "callbacks.latent_use.warn_after", lu.warn_after, "must be >= 0 iterations")
    ev = cfg.callbacks.evaluation
    _require(ev.every_n_iterations >= 0, "callbacks.evaluation.every_n_iterations", ev.every_n_iterations, ">= 0 (0 = off)")
    _require(ev.num_samples >= 2, "callbacks.evaluation.num_samples", ev.num_samples, "must be >= 2")
    if cfg.logger.wandb is not None:
        w = cfg.logger.wandb
        _require(w.mode in WANDB_MODES, "logger.wandb.mode", w.mode, f"use one of {', '.join(WANDB_MODES)}")
        _require(w.init_timeout > 0, "logger.wandb.init_timeout", w.init_timeout, "must be a positive number of seconds")
    validate_metrics(cfg.metrics)


PRECISIONS = ("32-true", "32", "bf16-mixed")
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")  # callbacks.checkpoint.on_signals


MAX_IMAGE_SIZE = 512
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def activation_gib(size: int, width: int, batch_size: int) -> float:
    """A rough lower bound on one iteration's activations: ~60 float32 maps of width x size^2 per image."""
    return 60 * width * size * size * 4 * batch_size / 2**30


def device_count(devices: Any) -> int | None:
    """How many processes ``trainer.devices`` asks for per node (None: auto, decided by Lightning)."""
    if isinstance(devices, str):
        devices = devices.strip()
        if devices in ("auto", "-1"):
            return None
        if "," in devices:
            return len([int(d) for d in devices.split(",") if d.strip()])
        devices = int(devices)  # ValueError for a word
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return len(devices)


def validate_devices(t: DictConfig) -> None:
    devices = OmegaConf.to_container(t.devices) if isinstance(t.devices, ListConfig) else t.devices
    rule = "use a number of devices (1, 2, ...), a list of device indices ([0, 1]), or auto"
    try:
        n = device_count(devices)
    except (TypeError, ValueError):
        n = 0
    valid = n is None or (n >= 1 and (not isinstance(devices, list) or all(isinstance(i, int) and i >= 0 for i in devices)))
    _require(valid, "trainer.devices", devices, rule)
    _require(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "must be >= 1")
    many = (n or 1) > 1 or t.num_nodes > 1
    _require(not many or t.strategy == "ddp", "trainer.devices", devices,
             "more than one device (or trainer.num_nodes > 1) needs vaegan's DDP: add trainer=ddp (GPUs) or "
             "trainer=ddp_cpu (CPU processes), e.g. trainer=ddp_cpu trainer.devices=3")


def validate_trainer(t: DictConfig) -> None:
    _require(t.accelerator in ACCELERATORS, "trainer.accelerator", t.accelerator, f"use one of {', '.join(ACCELERATORS)}")
    validate_devices(t)
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "must be >= 1")
    _require(t.strategy in ("auto", "ddp"), "trainer.strategy", t.strategy,
             "use auto (one process) or ddp (trainer=ddp on GPUs, trainer=ddp_cpu on CPUs); other strategies cannot "
             "run three optimizers on gradients of one forward pass")
    fp16 = str(t.precision) in ("16", "16-mixed", "16-true")
    _require(not fp16, "trainer.precision", t.precision,
             "fp16 needs a gradient scaler per optimizer, and Lightning's single scaler under manual optimization "
             "would unscale the later optimizers' gradients with a changed scale; use bf16-mixed (Ampere or newer "
             "GPUs, and CPUs) or 32-true")
    _require(str(t.precision) in PRECISIONS, "trainer.precision", t.precision, f"use one of {', '.join(PRECISIONS)}")


def validate_metrics(mt: DictConfig) -> None:
    _require(mt.split in ("train", "valid", "test", "all"), "metrics.split", mt.split, "use train, valid, test or all")
    _require(mt.input_mode in ("auto", "tf", "uint8"), "metrics.input_mode", mt.input_mode, "use auto, tf or uint8")
    for key in ("num_samples", "num_reference"):
        _require(mt[key] >= 2, f"metrics.{key}", mt[key], "must be >= 2")
    for key in ("batch_size", "isc_splits", "kid_subsets", "kid_subset_size", "prc_neighborhood", "download_timeout"):
        _require(mt[key] > 0, f"metrics.{key}", mt[key], "must be positive")
    names = [] if mt.names is None else list(mt.names)
    unknown = sorted(set(names) - {"is", "fid", "kid", "prc"})
    _require(not unknown, "metrics.names", names, "choose from is, fid, kid, prc")
