"""Builds a run from a composed config and trains it: data, model, callbacks, loggers, Trainer."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from vaegan.training import checkpoints, distributed, performance, tracking
from vaegan.training.callbacks import ImageLogger, IterationCheckpoint, IterationProgressBar, PreemptionCheckpoint, TrainingStats
from vaegan.config import ConfigError, validate
from vaegan.models.controller import PIDUpdate
from vaegan.data import DATAMODULES, ArrayDataModule, CachedDataModule, build_datamodule
from vaegan.metrics import Extractor
from vaegan.metrics.callback import EvaluationCallback, LatentUseMonitor
from vaegan.metrics.settings import evaluation_kwargs, extractor_from, resolve_device
from vaegan.models.module import VAEGANModule


# Options that only some sources take (everything else in cfg.data is common to all).
SOURCE_OPTIONS = {
    "celeba": ("crop", "verify_checksums"), "cifar10": ("download", "verify_checksums"), "folder": ("crop",),
    "npz": (), "digits": (), "synthetic": ("length",),
}
CACHED_OPTIONS = ("root", "cache_dir", "cache_workers", "on_bad_image")  # sources read through the cache


def build_datamodule_from(cfg: DictConfig) -> ArrayDataModule:
    d = cfg.data
    kwargs = dict(batch_size=d.batch_size, image_size=d.image_size, channels=d.channels, num_workers=d.num_workers,
                  val_fraction=d.val_fraction, seed=cfg.seed, flip=d.flip, train_split=d.train_split,
                  split_seed=d.split_seed, worker_timeout=d.worker_timeout)
    cached = issubclass(DATAMODULES.get(d.name, ArrayDataModule), CachedDataModule)
    kwargs.update({key: d[key] for key in SOURCE_OPTIONS.get(d.name, ()) + (CACHED_OPTIONS if cached else ())})
    return build_datamodule(d.name, **kwargs)


def build_module(cfg: DictConfig) -> VAEGANModule:
    """The model of ``cfg.model``, run as ``cfg.performance`` says."""
    module = VAEGANModule(cfg.model, image_size=cfg.data.image_size, channels=cfg.data.channels, seed=cfg.seed)
    module.performance = performance.Performance(**OmegaConf.to_container(cfg.performance))  # applied at fit start
    return module


def build_callbacks(cfg: DictConfig, module: VAEGANModule, out: Path, extractor: Extractor | None = None) -> list[L.Callback]:
    """The run's callbacks, each given its values of ``cfg`` as keyword arguments (no defaults of their own)."""
    c = cfg.callbacks
    checkpoint = IterationCheckpoint(out / "checkpoints", every_n_iterations=c.checkpoint.every_n_iterations,
                                     keep_every_n_iterations=c.checkpoint.keep_every_n_iterations)
    callbacks: list[L.Callback] = [
        checkpoint,
        PreemptionCheckpoint(checkpoint, signals=tuple(c.checkpoint.on_signals)),
        ImageLogger(out, seed=cfg.seed, **OmegaConf.to_container(c.images)),
    ]
    if module.encoder is not None:
        callbacks.append(LatentUseMonitor(every_n_iterations=c.images.every_n_iterations, **OmegaConf.to_container(c.latent_use)))
    if extractor is not None:  # before IterationCheckpoint, so that last.ckpt holds the best FID so far
        protocol = {**evaluation_kwargs(cfg.metrics, torch.device("cpu")), "num_samples": c.evaluation.num_samples}
        callbacks.insert(0, EvaluationCallback(extractor, out / "checkpoints", every_n_iterations=c.evaluation.every_n_iterations,
                                               keep_best=c.evaluation.keep_best, **protocol))
    if module.discriminator is not None:  # first, so that checkpoints hold k_t after its update
        callbacks.insert(0, PIDUpdate(**OmegaConf.to_container(cfg.model.controller)))
    callbacks.append(TrainingStats(every_n_iterations=cfg.trainer.log_every_n_steps))
    if cfg.logger.wandb is not None and module.discriminator is not None:
        callbacks.append(tracking.ControllerChart(every_n_iterations=cfg.trainer.log_every_n_steps))
    if c.progress_bar.enabled:
        callbacks.append(IterationProgressBar(total_iterations=cfg.iterations, refresh_every=c.progress_bar.refresh_every))
    return callbacks


def keep_previous_metrics(out: Path) -> None:
    """CSVLogger deletes an existing metrics.csv; a run resumed in the same directory keeps it as
    metrics.N.csv instead."""
    metrics = out / "metrics.csv"
    if metrics.exists():
        n = 1
        while (out / f"metrics.{n}.csv").exists():
            n += 1
        metrics.rename(out / f"metrics.{n}.csv")


def build_loggers(cfg: DictConfig, out: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv is not None:  # -> <out>/metrics.csv, <out>/hparams.yaml
        if distributed.global_rank() == 0:
            keep_previous_metrics(out)
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        loggers.append(CSVLogger(out, name="", version="", flush_logs_every_n_steps=cfg.logger.csv.flush_every_n_iterations))
    if cfg.logger.tensorboard is not None:
        loggers.append(TensorBoardLogger(out, name=cfg.logger.tensorboard.subdir, version="", default_hp_metric=False))
    if cfg.logger.wandb is not None and distributed.global_rank() == 0:  # -> <out>/wandb/, <out>/wandb_run.json
        loggers.append(tracking.wandb_logger(cfg, out))
    return loggers


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains ``cfg.iterations`` iterations (resuming from ``cfg.ckpt_path``, or from the run
    directory's own last.ckpt when it has one); returns the last logged metrics. Raises
    ``Interrupted`` when a signal stopped training after saving last.ckpt."""
    validate(cfg)
    # The Inception weights are checked before anything else, so an offline machine fails in seconds.
    extractor = None
    if cfg.callbacks.evaluation.every_n_iterations:
        extractor = extractor_from(cfg.metrics, resolve_device(cfg.metrics.device))
    out = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_from(cfg)
    module = build_module(cfg)
    check_accelerator(cfg.trainer.accelerator)
    explicit = cfg.ckpt_path is not None
    cfg.ckpt_path = checkpoints.resume_path(cfg.ckpt_path, out)
    if cfg.ckpt_path is not None:  # fails in seconds, naming the problem, instead of deep in Lightning
        ckpt = checkpoints.load(cfg.ckpt_path, cfg.ckpt_weights_only, own_run=not explicit)
        checkpoints.check_resumable(ckpt, cfg.ckpt_path, dict(module.hparams))
        checkpoints.check_more_to_do(ckpt, cfg.ckpt_path, cfg.iterations, len(module.networks))
        del ckpt
    if distributed.global_rank() == 0:  # builds a cache here, outside Lightning, so that Ctrl-C stops it at once
        datamodule.prepare_data()
    if distributed.global_rank() == 0:  # also the config that ranks started by vaegan.training.distributed read
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    warnings.filterwarnings("ignore", message=".*val_dataloader.* but have no `validation_step`")  # held-out data is for evaluation
    loggers = build_loggers(cfg, out)
    failed = True
    try:
        metrics = fit(cfg, datamodule, module, build_callbacks(cfg, module, out, extractor), loggers, out)
        failed = False
        return metrics
    finally:
        tracking.finish(loggers, failed)  # each multirun job is its own W&B run


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for on a machine without one fails here, in one line, not in Lightning."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA GPU is visible here (torch.cuda.is_available() "
                          "is False); run on a machine with a GPU, or use trainer=cpu")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps: no Apple GPU (MPS) here; use trainer=cpu")


def fit(cfg: DictConfig, datamodule: ArrayDataModule, module: VAEGANModule, callbacks: list[L.Callback],
        loggers: list[Logger], out: Path) -> dict[str, float]:
    """Runs the Lightning Trainer; returns the last logged metrics."""
    options = OmegaConf.to_container(cfg.trainer)
    if options["strategy"] == "ddp":
        options["strategy"] = distributed.ManualDDPStrategy(config_file=out / "config.yaml")
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None  # submitit requeues
    trainer = L.Trainer(
        **options,
        plugins=plugins,
        use_distributed_sampler=False,  # the datamodule shards batches by rank itself
        max_steps=cfg.iterations * len(module.networks),  # Lightning counts optimizer steps
        max_epochs=-1,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=out,
        enable_checkpointing=False,  # IterationCheckpoint writes checkpoints by iteration
        enable_progress_bar=cfg.callbacks.progress_bar.enabled,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    if isinstance(trainer.strategy, DDPStrategy) and not isinstance(trainer.strategy, distributed.ManualDDPStrategy):
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} made Lightning choose its own DDP, which cannot run "
                          "vaegan's three optimizers; add trainer=ddp (GPUs) or trainer=ddp_cpu (CPU processes)")
    performance.warn_if_bf16_is_emulated(str(trainer.precision), trainer.strategy.root_device)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=cfg.ckpt_weights_only)
    interrupted = next((c.interrupted for c in callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if interrupted is not None:
        raise interrupted
    return {name: float(value) for name, value in trainer.callback_metrics.items()}
